"""Models: open_clip loading by name, config or checkpoint (loading), the query encoders on torch or
ONNX (encoders), the ONNX export (onnx_export, onnx_images), the int8 fast path (int8) and zero-shot
scoring of embeddings against label prompts (zero_shot)."""
