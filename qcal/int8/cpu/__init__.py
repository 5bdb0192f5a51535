"""The CPU qcal emulates: this machine's flags (``flags``), FBGEMM's instruction set per kernel
family and how ``QCAL_CPU`` / ``FBGEMM_ENABLE_INSTRUCTIONS`` / a Dask client's CPU choose it
(``isa``), and what ``qcal cpu`` reports (``report``)."""
