"""frames_pipeline: videos in, TransNetV2-ready frame arrays out, on NVDEC, FFmpeg with CUDA, or CPU."""
