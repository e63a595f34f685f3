"""Pure-functional samplers. Each module holds one algorithm (BlackJAX style)."""
