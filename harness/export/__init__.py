"""Shipping a run: its fold models as ONNX files that run without PyTorch (``bench export``), and
``bench predict`` with those files through onnxruntime."""
