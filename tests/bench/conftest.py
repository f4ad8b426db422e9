"""What the bench tests share: the names of the backends bench drives."""

AGRS = "allgather_reducescatter"
ONE = "flashinfer_nvlink_one_sided"
TWO = "flashinfer_nvlink_two_sided"
