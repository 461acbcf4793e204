"""Constrained decoding for local transformers models with llguidance.

llguidance (the grammar engine inside llama.cpp and one of vLLM's) ships as a wheel with no
dependencies. Per generation batch, one matcher per guided row follows the tokens it takes, and
before each step a processor masks the logits of every token the row's grammar does not allow
(the masks of all rows are computed in one parallel call). Unguided rows of the same batch are
left alone, and so are rows that have finished.

Where a row's model would end its reply (its best token is end-of-sequence) but the grammar
still needs a marker, the processor writes that marker, token by token, instead of the best
token the grammar allows: a free text ends where the model ended it, and the shape's next
marker follows. Texts have no length limit, so a row that never wants to end is cut by its
token budget, as unguided. In the llguidance form no text may hold a marker of its shape, so a
marker the grammar allows is always the structural one; of several, the furthest is written (the
end of the thinking rather than another reflection).

A small model, greedy, often never wants to end: it repeats a sentence until the budget runs out.
With a ``loop_guard`` of N characters, a text whose last N characters or more (and at least one
whole period) repeat verbatim the ones just before them (:mod:`~rtune.oracle.loop_guard`) is
ended there as if the model had ended it: the next marker is written (or the reply ends, after
its last text), and the repeated copies are dropped from the reply
(:meth:`GrammarProcessor.kept`; their tokens stay counted as generated). This is not a length
limit: a text that does not repeat itself runs to the token budget, and is flagged as cut there.
"""

from __future__ import annotations

from typing import Any

from ..extras import require
from ..guided import GuidedSpec, bridges
from ..guided_forms import json_schema, lark, regex
from .loop_guard import LoopWatch

ENGINE = "llguidance"
# llguidance stops a matcher whose lexer spends more than its fuel on one token's mask (default
# ~20 ms). The texts' exclusions make the first masks after a marker costly (each builds lexer
# states, once); the fuel here allows ~2 s for such a step and never binds on a warm matcher.
STEP_FUEL = 20_000_000


def _llguidance() -> Any:
    require("local", "guided local generation")
    import llguidance

    return llguidance


class LocalGuide:
    """llguidance's view of one tokenizer (built once, ~1 s) and the grammars compiled for it.

    ``auto`` and ``grammar`` use the llguidance form (texts kept free of everything the
    parser would misread), ``regex`` the servers' regex, ``json`` the JSON schema (the reply is
    then mapped back to the marked text)."""

    def __init__(self, tokenizer: Any, eos: list[int]):
        llg = _llguidance()
        import llguidance.hf

        self.llg = llg
        self.hf = tokenizer
        self.eos = list(eos)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, eos_token=self.eos or None)
        self.vocab = self.tokenizer.vocab_size
        self._grammars: dict[GuidedSpec, str] = {}
        self._bridges: dict[GuidedSpec, list[list[list[int]]]] = {}
        self._warm: dict[GuidedSpec, Any] = {}  # a matcher at the start, its lexer states built
        self._pieces: dict[int, str] = {}
        self.limits = llg.LLParserLimits(step_lexer_fuel=STEP_FUEL,
                                         initial_lexer_fuel=5 * STEP_FUEL)

    def piece(self, token: int) -> str:
        """One token's text (for the loop guard)."""
        text = self._pieces.get(token)
        if text is None:
            text = self._pieces[token] = self.hf.decode([token])
        return text

    def grammar(self, spec: GuidedSpec) -> str:
        """The compiled grammar of ``spec`` (compiled once per spec)."""
        if spec not in self._grammars:
            self._grammars[spec] = self._compile(spec)
        return self._grammars[spec]

    def _compile(self, spec: GuidedSpec) -> str:
        llg = self.llg
        if spec.mode == "json":
            source = llg.LLMatcher.grammar_from_json_schema(json_schema(spec.shape))
        elif spec.mode == "regex":
            source = llg.LLMatcher.grammar_from_regex(regex(spec.shape))
        else:
            source = llg.LLMatcher.grammar_from_lark(lark(spec.shape))
        error = llg.LLMatcher.validate_grammar(source, self.tokenizer)
        if error:
            raise ValueError(f"llguidance refused the {spec.shape.name} grammar: {error}")
        return source

    def bridges(self, spec: GuidedSpec) -> list[list[list[int]]]:
        """The token ids of :func:`~rtune.guided.bridges` (none for JSON replies)."""
        if spec not in self._bridges:
            self._bridges[spec] = [] if spec.mode == "json" else [
                [self.hf.encode(text, add_special_tokens=False) for text in variants]
                for variants in bridges(spec.shape)]
        return self._bridges[spec]

    def matcher(self, spec: GuidedSpec) -> Any:
        """A matcher at the start of ``spec``'s grammar: a copy of the warm one (the lexer
        states earlier batches built come with it: ~8x faster masks than a fresh one)."""
        warm = self._warm.get(spec)
        if warm is None:
            warm = self._warm[spec] = self.llg.LLMatcher(
                self.tokenizer, self.grammar(spec), log_level=0, limits=self.limits)
        return warm.deep_copy()

    def keep_warm(self, spec: GuidedSpec, matcher: Any) -> None:
        """Keep ``matcher`` (its lexer states built by a batch), reset to the start."""
        if not matcher.is_error() and matcher.reset():
            self._warm[spec] = matcher

    def processor(self, specs: list[GuidedSpec | None], width: int,
                  done: list[Any]) -> GrammarProcessor:
        matchers = [None if s is None else self.matcher(s) for s in specs]
        return GrammarProcessor(self, specs, matchers, width, done)


class GrammarProcessor:
    """A transformers logits processor: masks each guided row to its grammar's next tokens.

    ``done`` is the batch's per-row stopping record (None while a row runs); a finished row's
    padding is never fed to its matcher."""

    def __init__(self, guide: LocalGuide, specs: list[GuidedSpec | None], matchers: list[Any],
                 width: int, done: list[Any]):
        import numpy as np

        self.guide = guide
        self.specs = specs
        self.matchers = matchers
        self.width = width
        self.done = done
        self.words = (guide.vocab + 31) // 32
        self.bits = np.zeros((len(matchers), self.words), dtype=np.int32)
        self.executor = guide.llg.LLExecutor()
        self.errors: dict[int, str] = {}
        self.forced: dict[int, list[int]] = {}  # a marker being written: its tokens to come
        self.bridged = [0] * len(matchers)  # markers written where the model ended a text
        self.watches = [None if s is None or not s.loop_guard or s.mode == "json"
                        else LoopWatch(s.loop_guard, guide.piece) for s in specs]
        self.drops: list[list[tuple[int, int]]] = [[] for _ in matchers]  # (from, to) dropped

    def finish(self) -> None:
        """After the batch: keep one matcher per grammar warm for the next batches."""
        for i, (spec, matcher) in enumerate(zip(self.specs, self.matchers)):
            if spec is not None and i not in self.errors:
                self.guide.keep_warm(spec, matcher)

    def _live(self) -> list[int]:
        return [i for i, m in enumerate(self.matchers)
                if m is not None and self.done[i] is None and i not in self.errors]

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        rows = self._live()
        if not rows:
            return scores
        if input_ids.shape[1] > self.width:
            last = input_ids[:, -1].tolist()
            for i in rows:
                if not self.matchers[i].consume_token(last[i]):
                    self.errors[i] = self.matchers[i].get_error() or "token refused"
                queue = self.forced.get(i)
                if queue and queue[0] == last[i]:
                    queue.pop(0)
            rows = self._live()
            if not rows:
                return scores
        n = input_ids.shape[1] - self.width  # tokens generated so far
        looping = self._looping(rows, input_ids) if n else set()
        best = scores[rows].argmax(dim=-1).tolist()
        self.executor.unsafe_compute_mask_ptr(
            [(self.matchers[i], i) for i in rows], self.bits.ctypes.data, self.words * 4,
            len(self.matchers))
        allowed = np.unpackbits(self.bits[rows].view(np.uint8), axis=1, bitorder="little")
        for k, i in enumerate(rows):
            token = self.forced[i][0] if self.forced.get(i) else None
            ends = [e for e in self.guide.eos if e < allowed.shape[1] and allowed[k, e]]
            if token is None and i in looping:
                token = ends[0] if ends else self._forced(i)
                if token is not None:
                    self._drop(i, n)
            elif token is None and best[k] in self.guide.eos and not ends:
                token = self._forced(i)
            if token is not None:
                allowed[k] = 0
                allowed[k, token] = 1
        n = min(scores.shape[1], allowed.shape[1], self.guide.vocab)
        mask = torch.ones((len(rows), scores.shape[1]), dtype=torch.bool)
        mask[:, :n] = torch.from_numpy(allowed[:, :n] == 0)
        index = torch.tensor(rows, device=scores.device)
        scores[index] = scores[index].masked_fill(mask.to(scores.device), float("-inf"))
        return scores

    def _looping(self, rows: list[int], input_ids: Any) -> set[int]:
        """The rows whose text repeats itself now (each watch takes the row's last token)."""
        out = set()
        for i in rows:
            watch = self.watches[i]
            if watch is not None and watch.push(int(input_ids[i, -1])) and not self.forced.get(i):
                out.add(i)
        return out

    def _drop(self, row: int, n: int) -> None:
        """Drop the repeated copies of a loop from the reply (``n`` tokens so far), keep one,
        and watch afresh."""
        watch = self.watches[row]
        assert watch is not None
        self.drops[row].append((n - len(watch.ends) + watch.keep(), n))
        watch.restart()

    def looped(self, row: int) -> int:
        """How many of the row's texts the loop guard ended."""
        return len(self.drops[row])

    def kept(self, row: int, tokens: list[int]) -> list[int]:
        """``tokens`` (the row's reply) less the repeated copies its loop guard dropped."""
        out, at = [], 0
        for start, end in self.drops[row]:
            out += tokens[at:start]
            at = end
        return out + tokens[at:]

    def _forced(self, row: int) -> int | None:
        """The first token of the furthest marker the grammar allows here, or None."""
        spec = self.specs[row]
        assert spec is not None
        matcher = self.matchers[row]
        for variants in reversed(self.guide.bridges(spec)):
            for tokens in variants:
                if tokens and matcher.validate_tokens(tokens) == len(tokens):
                    self.forced[row] = list(tokens)
                    self.bridged[row] += 1
                    return tokens[0]
        return None

