"""The abuse suite: issue 10's attacks against real node processes (docs/abuse-testing.md)."""
