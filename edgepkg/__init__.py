"""edgepkg: secure model packaging and OTA updates for edge AI fleets."""

__version__ = "0.1.0"
