"""llmitm's mitmproxy addons. `addons/gateway.py` is the entry point that builds the chain."""
