"""The trio shell: config loading, actors and their supervisor, the web app, the server and the CLI."""
