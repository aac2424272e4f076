"""Adapters between the gateway and LLM providers.

Each wire format has pure functions (encode the request, decode a response or a stream event) and a
thin caller doing the I/O. The built-in simulator speaks the same interface without a network.
All failures leave this package as `providers.errors.ProviderError`.
"""
