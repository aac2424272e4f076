"""Pure decisions: validation, cost, budgets, rate limits, circuit breaking, routing order.

Functions here take the state and `now` and return decisions; they do no I/O and never import trio
(hypercorn's `protocol/` habit). The runtime's actors apply them.
"""
