"""Layer 3: the learner and everything it trains with (model, policies, replay buffer); no sockets here."""
