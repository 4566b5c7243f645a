"""liveroom engine package."""
