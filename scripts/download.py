"""Rule `download`: one month of canonical temperature/geopotential on pressure levels."""

import json

from geodiff.data.sources import download_month
from geodiff.logs import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the workflow)
download_month(
    json.loads(snakemake.params.config),  # noqa: F821
    int(snakemake.wildcards.year),  # noqa: F821
    int(snakemake.wildcards.month),  # noqa: F821
    snakemake.output[0],  # noqa: F821
)
