"""The machine: hardware detection, environment fingerprint, measured roofs, datasheet peaks."""
