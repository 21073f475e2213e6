"""deid-node: a DICOM node that de-identifies studies on their way to research."""

import os
import sys

# GDCM, installed with presidio-image-redactor, is one of pydicom's pixel decoders and
# costs about 21 MB in every process that imports pydicom (the node runs three or
# more). pylibjpeg decodes every image the node can receive just as well (the same
# 289 test images decode with or without it), so the node keeps GDCM out unless
# DEID_NODE_GDCM=1; the pixel pass loads it only for what pylibjpeg cannot decode
# (deid/pixels/gdcm_decoder.py). This must run before pydicom is imported: the
# package is.
if os.environ.get("DEID_NODE_GDCM") != "1":
    sys.modules.setdefault("gdcm", None)  # type: ignore[arg-type]

# pydicom's test-data downloader imports requests (and urllib3, idna, charset
# detection: about 5 MB in each of the node's processes) for files the node never
# fetches; without it, the downloader falls back to urllib. requests is hidden only
# while pydicom is first imported, so it stays importable for anything else.
if "pydicom" not in sys.modules and "requests" not in sys.modules:
    sys.modules["requests"] = None  # type: ignore[assignment]
    try:
        import pydicom.data.download  # noqa: F401
    finally:
        del sys.modules["requests"]
