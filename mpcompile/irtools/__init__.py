"""Small helpers over onnx-ir graphs and values, shared by every part of mpcompile."""
