"""Side-by-side benchmark of frames_pipeline against NeMo Curator's paths and other decoders."""
