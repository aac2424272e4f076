"""The ledger's trio side: the Journal (the only writer), the Projector, the Books, replay and re-pricing."""
