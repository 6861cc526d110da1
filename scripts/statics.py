"""Rule `statics`: orography and land-sea mask on the fine grid."""

import json

from geodiff.data.sources import download_statics
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821
download_statics(json.loads(snakemake.params.config), snakemake.output[0])  # noqa: F821
