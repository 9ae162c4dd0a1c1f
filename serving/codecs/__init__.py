"""Wire formats <-> numpy: TF Serving JSON, KServe V2 JSON (+ binary extension); and TF Serving's
status and metadata messages for both transports (``tfserving_status``).

Codecs only convert and check the structure of a payload; the dataplane validates tensors against
the model's input spec. Every problem is an ``InvalidArgument`` whose message names it.
"""
