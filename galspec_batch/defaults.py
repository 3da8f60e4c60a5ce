"""Every default and set of choices a user meets on the command line, defined once: the library's
functions and settings take them from here and the CLI shows them (a prediction run's own
settings and their defaults are in :mod:`galspec_batch.options`). No imports, so the command line
starts fast."""

SEED = 0

# the mock survey (galspec simulate)
SIM_GALAXIES = 1000
SIM_IMAGE_SIZE = 64
PIXEL_SCALE = 0.25  # arcsec per pixel, as Pan-STARRS cutouts
SIM_FIELD = (150.0, 2.2, 1.0)  # RA, Dec, radius (degrees) of the sky cap
SIM_ANOMALY_RATE = 0.01
SIM_BATCH = 256
STORE_DTYPE = "float16"
MAX_TASK_ROWS = 16_384  # rows of one predict task at most: big partitions are cut (predict/tasks.py)
TASKS_PER_WORKER = 4  # and tasks made smaller until each worker has this many (bench_schedule.py)
CPU_COMPUTE_BATCH = 32  # cutouts per forward pass on the CPU, whatever --batch-size reads (bench_predict.py)
TRIM_INTERVAL_S = 5.0  # a predicting process hands freed heap back at most this often (bench_memory.py)
STORE_CODECS = ("zstd", "zstd-1", "lz4", "lz4-bitshuffle", "none")  # the images' codec: --codec
STORE_CODEC = "zstd"  # chosen by bench/bench_store.py (catalogs/store-format.md)

# the published catalog (finalize): partitions merged up to this many rows, and the margin cache's radius
PARTITION_ROWS = 250_000
MARGIN_ARCSEC = 10.0

# ingest
INGEST_SURVEY = "unknown"
INGEST_DTYPE = "float32"
# PS1 stacks' AB zero point per second of EXPTIME: a store of PS1 images without --zero-point is put on it
PS1_ZERO_POINT = 25.0
SPECTRA_ID_FROM = "specobjid"
MIN_GRID_COVERAGE = 0.5
SPECTRA_CLASSES = ("GALAXY",)  # the pipeline's CLASS values ingest-spectra keeps (--classes)

# the spectrum VAE and the CNN
N_LATENTS = 6
N_BANDS = 5
VAE_EPOCHS = 100
TRAIN_EPOCHS = 10
TRAIN_BATCH_SIZE = 128
HEAD_DROPOUT = 0.2  # the paper's is 0; MC-dropout uncertainties need p > 0 in the head
LOSSES = ("beta-nll", "rmse")  # a mean and variance per target; the paper's point predictions
LOSS = "beta-nll"
BETA_NLL = 0.5  # Seitzer et al. (2022): their recommended beta
HEAD = "gaussian"
VAL_FRACTION = 0.2
# the training step's arithmetic: fp32, or bf16 autocast (convolutions and matmuls in bfloat16, weights,
# optimiser and deconvolution statistics in float32): x1.3-1.9 on a CPU with avx512_bf16
# (bench/bench_training.py); results differ at bfloat16's precision, so it is asked for, not the default
TRAIN_PRECISIONS = ("fp32", "bf16")
TRAIN_PRECISION = "fp32"

# export
EXPORT_FORMATS = ("onnx", "tensorrt")
EXPORT_PRECISIONS = ("fp32", "fp16")  # the exported graphs' dtypes
EXPORT_PRECISION = "fp32"
EXPORT_MAX_BATCH = 1024

# using a catalog
CALIBRATION_FRACTION = 0.5
DECODE_DRAWS = 64
ANOMALY_ALPHA = 1e-3
OOD_THRESHOLD = 5.0
NEIGHBOURS = 10
MIN_PROB = 0.5

# running
CLUSTER = "auto"
# --cluster auto: a local Dask cluster only for a store this large, in at least 4 partitions a worker;
# below it in-process wins (16,384 cutouts at 64 px: the cluster took 1.48x as long, start-up and
# the last partition alone on one worker)
AUTO_CLUSTER_MIN_OBJECTS = 50_000
# on 2 cores a local cluster lost to in-process at every size measured (bench/bench_schedule.py)
AUTO_CLUSTER_MIN_CORES = 4
JOB_NAME = "galspec"
DASK_JOB_NAME = "galspec-dask"
DEMO_OUT = "galspec-demo"

# downloads from the survey archives (galspec download): polite by default, one budget for all workers
DOWNLOAD_CONCURRENCY = 4  # requests in flight at once
DOWNLOAD_RATE = 5.0  # requests per second, all workers together (a token bucket)
DOWNLOAD_TIMEOUT = 60.0  # seconds to connect, and for each read of the answer
DOWNLOAD_RETRIES = 5  # tries after the first, on 429/5xx, timeouts, dropped connections, bad bodies
DOWNLOAD_BACKOFF = 2.0  # seconds before the first retry; doubled each time, with jitter
DOWNLOAD_BACKOFF_MAX = 120.0
DOWNLOAD_RETRY_AFTER_MAX = 600.0  # a server that asks for a longer wait stops the run (rerun later)
DOWNLOAD_MAX_BYTES = 256 << 20  # a larger answer is refused: no cutout or spectrum is that big
DOWNLOAD_DEADLINE_TIMEOUTS = 10  # a whole answer must come within this many timeouts (600 s by default)
CUTOUT_SURVEYS = ("ps1", "legacy")
CUTOUT_SURVEY = "ps1"
CUTOUT_SIZE = 224  # pixels a side (the paper's input)
PS1_URL = "https://ps1images.stsci.edu"
LEGACY_URL = "https://www.legacysurvey.org"
LEGACY_LAYER = "ls-dr10"
SDSS_URL = "https://data.sdss.org"
SDSS_RELEASE = "dr17"
USER_AGENT = "galspec-batch/{version} (survey-archive client; python-urllib3/{urllib3}{contact})"
