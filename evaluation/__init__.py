"""The evaluation networks and measures, and the sets they score."""
