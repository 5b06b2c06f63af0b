"""What a recipe is: the TOML schema, the plugin hooks that supply its components, the one table of
component kinds, the plugin registry that finds and builds them, and the pretrained-weights helper
that model plugins share."""
