"""What the llama thread does for each request: pick the conversation, run the turn, report.

Every method here runs on the server's one llama thread (see worker.py), so the Runtime,
its engine and its SQLite connection are only ever touched from that thread. The HTTP side
never sees a Runtime: it gets text pieces through `emit` and an `Outcome` at the end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import Cancelled, EdgechatError
from ..lock import ConversationLock
from ..session import Conversation, Runtime
from ..store import NewMessage
from .matching import ConversationIndex, same_messages, stored_history
from .protocol import ApiError, ChatRequest, CompletionRequest, Outcome, Sampling

Emit = Callable[[str, Any], None]  # ("model", name) | ("conversation", id) | ("piece", text)
SEED_MOD = 2**32  # llama.cpp's sampler seed is a uint32


@dataclass(frozen=True)
class ModelInfo:
    loaded: str
    available: tuple[str, ...]  # registry models on disk, loaded one excluded


class Backend:
    """The server's Runtime plus the index that maps request histories to conversations."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.index = ConversationIndex(runtime.store)
        self.initial = ("", "")  # the model the server started with: (name, spec), always selectable

    def start(self) -> str:
        """Load the model and index the stored conversations; returns the model's name."""
        self.rt.load()
        self.initial = (self.rt.model_name, self.rt.model_spec)
        self.index.rebuild()
        return self.rt.model_name

    def close(self) -> None:
        self.rt.close()

    def watch_memory(self) -> None:
        """Between requests (on the llama thread): re-plan the context when memory got short, or
        grow it back (Runtime.watch_memory); the next chat response carries the re-plan."""
        self.rt.watch_memory()

    # models ---------------------------------------------------------------------------

    def models(self) -> ModelInfo:
        from ..registry import Registry, list_models

        try:
            rows = list_models(Registry.load(self.rt.paths), self.rt.paths)
        except EdgechatError:
            rows = []
        loaded = self.rt.model_name
        names = [self.initial[0]] + [r.name for r in rows if r.downloaded]
        return ModelInfo(loaded, tuple(dict.fromkeys(n for n in names if n and n != loaded)))

    def _names_of_loaded(self) -> tuple[str, ...]:
        engine = self.rt.engine
        path = engine.settings.model_path if engine is not None else ""
        return tuple(n for n in (self.rt.model_name, self.rt.model_spec, path) if n)

    def _select_model(self, requested: str | None) -> None:
        """Switch to the model a request names: the loaded one, or a downloaded registry model.

        Paths are not accepted from the network: a client may only pick what `/v1/models` lists.
        """
        if requested is None or not requested.strip() or requested in self._names_of_loaded():
            return
        if requested not in self.models().available:
            raise ApiError(
                404,
                f"the model {requested!r} does not exist here; GET /v1/models lists the ones this server can use",
                code="model_not_found",
                param="model",
            )
        self.rt.load(self.initial[1] if requested == self.initial[0] else requested)

    def _sampling_overrides(self, s: Sampling) -> dict[str, Any]:
        return {
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": None if s.seed is None else s.seed % SEED_MOD,
        }

    # chat -----------------------------------------------------------------------------

    def chat(self, req: ChatRequest, emit: Emit, stop: threading.Event) -> Outcome:
        self._select_model(req.model)
        emit("model", self.rt.model_name)
        conv, created = self._conversation_for(req)
        emit("conversation", conv.id)
        o = self._sampling_overrides(req.sampling)
        turn = conv.stream(
            req.text, max_tokens=o["max_tokens"], temperature=o["temperature"], top_p=o["top_p"], seed=o["seed"],
            stop=stop, stop_strings=req.sampling.stop,
        )  # fmt: skip
        try:
            for piece in turn:
                emit("piece", piece)
        except BaseException:
            if created:
                # The request failed (e.g. a prompt over the context with compaction off): the
                # client got an error, not a conversation, so none is left behind.
                self.rt.delete_conversation(conv.id)
            raise
        finally:
            self.index.refresh(conv.id)
        reply = turn.reply
        assert reply is not None
        st = reply.stats
        return Outcome(
            text=reply.text,
            finish_reason=st.finish_reason,
            prompt_tokens=turn.prompt_tokens,
            completion_tokens=st.completion_tokens,
            model=self.rt.model_name,
            edgechat={
                "conversation_id": st.conversation_id,
                "restored_from": st.restored_from,
                "prefill_tokens": st.prefill_tokens,
                "context_tokens": st.context_tokens,
                "context_limit": st.context_limit,
                "compacted": st.compacted,
                "ttft_s": round(st.ttft_s, 4),
                "restore_s": round(st.restore_s, 4),
                "decode_tokens_per_s": round(st.decode_tokens_per_s, 2),
                "kv_type": st.kv_type,
                "finish_reason": st.finish_reason,
                "notices": list(reply.notices),
                "replan": st.replan,  # the context re-planned under memory pressure since the last turn, or None
            },
        )

    def _conversation_for(self, req: ChatRequest) -> tuple[Conversation, bool]:
        """The conversation this request continues (and whether it was created for it).

        Explicit id ▸ a stored conversation whose messages the request extends ▸ a new one.
        Messages of the request that the conversation lacks (all of them for a new one, or
        several turns sent at once) are stored first, so the transcript holds what the model saw.
        """
        rt = self.rt
        system = req.system if req.system is not None else rt.system_prompt
        history = list(req.history)
        if req.conversation_id is not None:
            try:
                record = rt.store.conversation(req.conversation_id)
            except EdgechatError as exc:
                raise ApiError(404, exc.message, code="conversation_not_found", param="conversation_id") from exc
            stored_system, stored = stored_history(rt.store, record.id)
            if history and not (len(history) >= len(stored) and same_messages(history[: len(stored)], stored)):
                raise ApiError(
                    409,
                    f"the messages do not continue conversation {record.id}: send its stored messages "
                    "followed by new ones, only the new message, or no conversation_id",
                    code="conversation_mismatch",
                    param="messages",
                )
            extra = history[len(stored) :] if history else []
            if req.system is not None and req.system != stored_system:
                rt.store.update(record.id, settings={**record.settings, "system_prompt": req.system})
            conv = rt.conversation(record.id)
            self._append(conv, extra)
            return conv, False
        found = self.index.find(system, history, self._names_of_loaded()) if history else None
        if found is not None:
            cid, k = found
            conv = rt.conversation(cid)
            self._append(conv, history[k:])
            return conv, False
        conv = rt.new_conversation(system_prompt=system, model=rt.model_spec)
        first_user = next((c for r, c in history if r == "user" and c.strip()), "")
        title = first_user.strip().splitlines()[0][:60] if first_user else None
        self._append(conv, history, title=title)
        return conv, True

    def _append(self, conv: Conversation, messages: list[tuple[str, str]], title: str | None = None) -> None:
        if not messages and title is None:
            return
        rt = self.rt
        engine = rt.load()
        new = [NewMessage(role, content, tokens=engine.count_tokens(content)) for role, content in messages]
        with ConversationLock(rt.paths.data_dir / "locks", conv.id, rt.lock_timeout_s):
            rt.store.append_turn(conv.id, new, title=title)

    # completions ----------------------------------------------------------------------

    def complete(self, req: CompletionRequest, emit: Emit, stop: threading.Event) -> Outcome:
        """A stateless raw completion; `edgechat` says what the live cache saved (no conversation)."""
        self._select_model(req.model)
        rt = self.rt
        emit("model", rt.model_name)
        sampling = rt.sampling(**self._sampling_overrides(req.sampling))
        stream = rt.generate(req.prompt, raw=True, sampling=sampling, stop=stop, stop_strings=req.sampling.stop)
        text: list[str] = []
        try:
            for piece in stream:
                text.append(piece)
                emit("piece", piece)
        except Cancelled:
            pass  # stopped before its first token (client gone, server stopping)
        res = stream.result
        engine = rt.load()
        if res is None:
            return Outcome("".join(text), "cancelled", 0, 0, rt.model_name, {"conversation_id": None})
        return Outcome(
            text=res.text,
            finish_reason=res.finish_reason,
            prompt_tokens=res.prompt_tokens,
            completion_tokens=res.completion_tokens,
            model=res.model,
            edgechat={
                "conversation_id": None,
                "restored_from": "memory" if res.prefill_tokens < res.prompt_tokens else "new",
                "prefill_tokens": res.prefill_tokens,
                "context_tokens": engine.n_cached,
                "context_limit": engine.n_ctx,
                "ttft_s": round(res.ttft_s, 4),
                "decode_tokens_per_s": round(res.decode_tokens_per_s, 2),
                "kv_type": res.kv_type,
                "finish_reason": res.finish_reason,
            },
        )
