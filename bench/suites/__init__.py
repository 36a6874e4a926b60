"""Suite files (*.toml here) -> ordered benchmark Points."""
