"""Tollgate's benchmark harness: the latency Tollgate adds and the traffic one core carries.

Run ``make bench`` (or ``.venv/bin/python -m bench``; ``--quick`` for a smoke test, ``--peers`` to add the
LiteLLM proxy side by side, ``--help`` for every knob). It starts a fast fake OpenAI upstream
(bench/upstream.py), the gateway and any peers on loopback, runs each scenario in bench/scenarios/ against
the direct upstream and through each gateway, alternating, and writes a table to stdout, a JSON file under
bench/results/ and bench/RESULTS.md. See bench/README.md for how each figure is taken.
"""
