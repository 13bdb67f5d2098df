"""Triton Python-backend model that generates text with a causal LM exported to ONNX with a KV cache.

Decoupled (streaming): each request gets one response per generated token, then an empty final one.
The tensors are TensorRT-LLM's (`tensorrt_llm` model of tensorrtllm_backend), so a router that drives this
model drives a real TensorRT-LLM engine on a GPU Triton the same way; docs/models.md lists them.

In-flight batching: requests are queued by `execute` (which returns at once) and a single engine thread
runs the model. Between two decode steps it advances the prefill of up to `max_prefills_per_step` joining
streams by one chunk of their prompt (`prefill_chunk_tokens`, into the stream's own KV cache), and a
stream whose prompt is all in sends its first token and joins the running batch; every decode step
advances every running stream by one token. So a long prompt never stalls the running streams for more
than one chunk, and a caller that goes away mid-prompt stops its prefill at the next chunk. A stream
leaves the batch when it ends (end token, its length, cancelled by its caller); the others go on. The
batch's KV cache is left-padded to the longest stream and masked, and it is rebuilt only when the batch's
membership changes. Any failure fails the streams it touched and the engine goes on.

Model-config parameters read here:
  onnx_file              file name inside the version folder (default model.onnx)
  onnx_intra_op_threads  onnxruntime intra-op threads (default 0: onnxruntime decides)
  max_context            prompt plus generated tokens, at most (default 8192)
  max_prefills_per_step  joining streams whose prefill advances between two decode steps (default 2)
  prefill_chunk_tokens   prompt tokens per prefill step (default 256), so joining streams do not stall
                         running ones for long

Custom metrics (Triton's metrics port): `llm_generated_tokens_total`, `llm_streams_total{outcome}`
(finished, cancelled), `llm_running_streams`.
"""

import contextlib
import json
import os
import queue
import threading

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _scalar(request, name, default, kind=float):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    return kind(tensor.as_numpy().reshape(-1)[0])


class Stream:
    """One request being generated."""

    def __init__(self, request, max_context):
        self.request = request
        self.sender = request.get_response_sender()
        ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
        length = _scalar(request, "input_lengths", len(ids), int)
        self.prompt = [int(t) for t in ids[:length]]
        self.max_new = _scalar(request, "request_output_len", 16, int)
        self.end_id = _scalar(request, "end_id", -1, int)
        self.temperature = _scalar(request, "temperature", 1.0)
        self.top_k = _scalar(request, "runtime_top_k", 0, int)
        self.top_p = _scalar(request, "runtime_top_p", 0.0)
        self.repetition_penalty = _scalar(request, "repetition_penalty", 1.0)
        seed = _scalar(request, "random_seed", None, int)
        self.rng = np.random.default_rng(seed)
        self.stop_ids = set()
        stop = pb_utils.get_input_tensor_by_name(request, "stop_words_list")
        if stop is not None:
            # TensorRT-LLM's layout: [2, n] of (flattened token ids, end offsets padded with -1). Only
            # one-token stop words are taken here; the router matches stop strings itself.
            words, offsets = stop.as_numpy().reshape(2, -1)
            start = 0
            for end in offsets:
                if end < 0:
                    break
                if end - start == 1:
                    self.stop_ids.add(int(words[start]))
                start = int(end)
        if not self.prompt:
            raise ValueError("input_ids is empty")
        if len(self.prompt) + self.max_new > max_context:
            raise ValueError(
                f"prompt ({len(self.prompt)} tokens) plus request_output_len ({self.max_new}) exceed the "
                f"context of {max_context} tokens"
            )
        if self.max_new < 1:
            raise ValueError("request_output_len must be at least 1")
        self.generated = []
        self.done = False
        self.past = None  # per layer key and value, [1, heads, length, head_dim]
        self.length = 0  # tokens in the KV cache

    @property
    def last(self):
        return self.generated[-1]

    def sample(self, logits):
        if self.repetition_penalty != 1.0:
            seen = np.fromiter(set(self.prompt) | set(self.generated), dtype=np.int64)
            values = logits[seen]
            logits[seen] = np.where(values > 0, values / self.repetition_penalty, values * self.repetition_penalty)
        greedy = self.temperature <= 0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0.0)
        if greedy:
            return int(np.argmax(logits))
        logits = logits.astype(np.float64) / self.temperature
        order = np.argsort(-logits)
        if self.top_k > 0:
            order = order[: self.top_k]
        chosen = logits[order]
        probs = np.exp(chosen - chosen.max())
        probs /= probs.sum()
        if 0.0 < self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            probs = probs[:keep] / probs[:keep].sum()
            order = order[:keep]
        return int(order[self.rng.choice(len(probs), p=probs)])

    def finished(self):
        token = self.generated[-1]
        return token == self.end_id or token in self.stop_ids or len(self.generated) >= self.max_new


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("onnx_intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.past_names = [node.name for node in self.session.get_inputs() if node.name.startswith("past_key_values")]
        self.present_names = ["logits"] + [name.replace("past_key_values", "present") for name in self.past_names]
        shape = self.session.get_inputs()[3].shape  # [batch, heads, past, head_dim]
        self.heads, self.head_dim = int(shape[1]), int(shape[3])
        self.max_streams = max(1, int(config.get("max_batch_size", 8)))
        self.max_context = int(params.get("max_context", "8192"))
        self.max_prefills = int(params.get("max_prefills_per_step", "2"))
        self.prefill_chunk = int(params.get("prefill_chunk_tokens", "256"))

        labels = {"model": args["model_name"], "version": args["model_version"]}
        tokens = pb_utils.MetricFamily(
            name="llm_generated_tokens_total", description="Tokens generated", kind=pb_utils.MetricFamily.COUNTER
        )
        streams = pb_utils.MetricFamily(
            name="llm_streams_total", description="Streams ended, by outcome", kind=pb_utils.MetricFamily.COUNTER
        )
        running = pb_utils.MetricFamily(
            name="llm_running_streams", description="Streams in the running batch", kind=pb_utils.MetricFamily.GAUGE
        )
        # The families must outlive their metrics: kept on the model.
        self.metric_families = (tokens, streams, running)
        self.tokens_metric = tokens.Metric(labels=labels)
        self.outcome_metric = {
            outcome: streams.Metric(labels={**labels, "outcome": outcome}) for outcome in ("finished", "cancelled")
        }
        self.running_metric = running.Metric(labels=labels)

        self.waiting = queue.Queue()
        self.stopping = threading.Event()
        self.engine = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self.engine.start()

    def execute(self, requests):
        for request in requests:
            try:
                self.waiting.put(Stream(request, self.max_context))
            except Exception as error:  # a bad request is answered with its error, never dropped
                sender = request.get_response_sender()
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
        return None

    def finalize(self):
        self.stopping.set()
        self.engine.join(timeout=10)

    # The engine thread.

    def _run(self):
        running, joining = [], []
        batch = None  # (members, past arrays, mask) while the membership is unchanged
        while not self.stopping.is_set():
            try:
                running, joining, batch = self._iterate(running, joining, batch)
            except Exception as error:  # the engine must outlive any one failure: fail its streams, go on
                pb_utils.Logger.log_error(f"llm engine: {error!r}")
                for stream in running + joining:
                    self._fail(stream, error)
                running, joining, batch = [], [], None

    def _iterate(self, running, joining, batch):
        """Take waiting streams, advance up to `max_prefills` prefills by one chunk, drop ended streams, run
        one decode step; return the new state."""
        while len(running) + len(joining) < self.max_streams:
            idle = not running and not joining
            try:
                joining.append(self.waiting.get(timeout=0.05 if idle else 0))
            except queue.Empty:
                break
        joining = [s for s in joining if not self._ended(s)]
        joined = []
        for stream in joining[: self.max_prefills]:
            if self._prefill_chunk(stream) and not stream.done:
                joined.append(stream)
        joining = [s for s in joining if s not in joined and not s.done]
        if joined:
            running, batch = running + joined, None
        kept = [s for s in running if not self._ended(s)]
        if len(kept) != len(running):
            running, batch = kept, None
        self.running_metric.set(len(running))
        if not running:
            return running, joining, None
        return running, joining, self._decode(running, batch)

    def _feed(self, ids, mask, positions, past):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        feed.update(zip(self.past_names, past, strict=True))
        return feed

    def _prefill_chunk(self, stream):
        """Run the next chunk of the stream's prompt into its own KV cache; once the whole prompt is in,
        send its first token and return True."""
        start = stream.length
        chunk = stream.prompt[start : start + self.prefill_chunk]
        past = stream.past or [np.zeros((1, self.heads, 0, self.head_dim), np.float32)] * len(self.past_names)
        try:
            outputs = self.session.run(
                self.present_names,
                self._feed(
                    np.array([chunk], np.int64),
                    np.ones((1, start + len(chunk)), np.int64),
                    np.arange(start, start + len(chunk), dtype=np.int64)[None],
                    past,
                ),
            )
            stream.past, stream.length = outputs[1:], start + len(chunk)
            if stream.length < len(stream.prompt):
                return False
            self._emit(stream, stream.sample(outputs[0][0]))
        except Exception as error:
            self._fail(stream, error)
            return False
        return True

    def _decode(self, running, batch):
        if batch is None or batch[0] != running:
            width = max(s.length for s in running)
            past = []
            for layer in range(len(self.past_names)):
                merged = np.zeros((len(running), self.heads, width, self.head_dim), np.float32)
                for row, stream in enumerate(running):
                    merged[row, :, width - stream.length :, :] = stream.past[layer][0]
                past.append(merged)
            mask = np.zeros((len(running), width), np.int64)
            for row, stream in enumerate(running):
                mask[row, width - stream.length :] = 1
        else:
            _, past, mask = batch
        mask = np.concatenate([mask, np.ones((len(running), 1), np.int64)], axis=1)
        ids = np.array([[s.last] for s in running], np.int64)
        positions = np.array([[s.length] for s in running], np.int64)
        outputs = self.session.run(self.present_names, self._feed(ids, mask, positions, past))
        present = outputs[1:]
        width = mask.shape[1]
        for row, stream in enumerate(running):
            stream.length += 1
            # A view of this stream's valid part, for when the batch is rebuilt.
            stream.past = [p[row : row + 1, :, width - stream.length :, :] for p in present]
            self._emit(stream, stream.sample(outputs[0][row]))
        return (list(running), present, mask)

    def _emit(self, stream, token):
        """Send a token; the stream's last one carries the final flag (an empty final response is not
        passed on by Triton's gRPC front end unless the client asks for it)."""
        stream.generated.append(token)
        self.tokens_metric.increment(1)
        output = pb_utils.Tensor("output_ids", np.array([[[token]]], np.int32))
        length = pb_utils.Tensor("sequence_length", np.array([[len(stream.generated)]], np.int32))
        stream.done = stream.finished()
        flags = FINAL if stream.done else 0
        try:
            stream.sender.send(pb_utils.InferenceResponse(output_tensors=[output, length]), flags=flags)
        except Exception as error:  # the request is gone (cancelled, its sender closed): so is the stream
            pb_utils.Logger.log_warn(f"llm engine: a response could not be sent: {error!r}")
            stream.past, stream.done = None, True
            return
        if stream.done:
            self.outcome_metric["finished"].increment(1)
            stream.past = None

    def _ended(self, stream):
        """Whether a stream leaves the batch: it finished, or its caller went away (closed here)."""
        if stream.done:
            return True
        if stream.request.is_cancelled():
            self.outcome_metric["cancelled"].increment(1)
            stream.past = None
            stream.done = True
            with contextlib.suppress(Exception):  # Triton may have closed a cancelled request's sender itself
                stream.sender.send(flags=FINAL)
            return True
        return False

    def _fail(self, stream, error):
        if stream.done:
            return
        stream.past, stream.done = None, True
        with contextlib.suppress(Exception):  # its sender is closed already: nobody left to tell
            stream.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error))), flags=FINAL)
