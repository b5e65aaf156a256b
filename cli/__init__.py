"""raftq package."""
