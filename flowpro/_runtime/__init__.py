"""The node: producers, executor and the leader's periodic work."""
