"""What runs a backbone over image files, behind one interface (:mod:`synthdet.engines.base`: ``Engine``,
``create_engine``): torch in this process (:mod:`~synthdet.engines.local`), onnxruntime
(:mod:`~synthdet.engines.onnx_runtime`, with the ONNX export) and Ray Data (:mod:`~synthdet.engines.ray_data`); and
streamed, resumable scoring into files for any of them (:mod:`~synthdet.engines.stream`)."""
