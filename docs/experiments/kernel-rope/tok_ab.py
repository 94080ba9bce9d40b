"""In one process: the default generate with the fast tokenizer vs transformers' AutoTokenizer (alternating)."""
import time
from specjax import api, tokenizer
from transformers import AutoTokenizer
g = api.Generator.load()
fast = g.llm.tokenizer
slow = tokenizer.Tokenizer(AutoTokenizer.from_pretrained(str(__import__("specjax.default_model", fromlist=["x"]).TOKENIZER_DIR)), fast.eos_token_ids)
print(type(fast.hf).__name__, type(slow.hf).__name__)
for tk in (fast, slow): 
    object.__setattr__(g.llm, "tokenizer", tk); g.generate(["What is speculative decoding?"], max_new_tokens=128, chat=True)
for i in range(3):
    for name, tk in (("fast", fast), ("slow", slow)):
        object.__setattr__(g.llm, "tokenizer", tk)
        t = time.perf_counter(); r = g.generate(["What is speculative decoding?"], max_new_tokens=128, chat=True)[0]
        print(name, f"{time.perf_counter() - t:.3f}s", r.get("tokens_per_s", ""), r["llm_steps"])
