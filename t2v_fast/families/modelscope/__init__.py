"""ModelScope text-to-video 1.7B: a video UNet (`UNet3DConditionModel`) trained on video."""
