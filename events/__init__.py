"""The vocabulary of facts: value types (money, usage) and, with the ledger, the event classes.

This package imports only the standard library, attrs, cattrs, eventsourcing and sqlite-utils
(see DESIGN.md §2); everything else in Tollgate may import it.
"""
