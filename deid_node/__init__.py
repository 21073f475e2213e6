"""deid-node: a DICOM node that de-identifies studies on their way to research."""

import os
import sys

# GDCM, installed with presidio-image-redactor, is one of pydicom's pixel decoders and
# costs about 21 MB in every process that imports pydicom (the node runs three or
# more). pylibjpeg decodes every image the node can receive just as well (the same
# 289 test images decode with or without it), so the node keeps GDCM out unless
# DEID_NODE_GDCM=1. This must run before pydicom is imported: the package is.
if os.environ.get("DEID_NODE_GDCM") != "1":
    sys.modules.setdefault("gdcm", None)  # type: ignore[arg-type]
