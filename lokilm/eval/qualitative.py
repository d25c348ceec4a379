"""The LokiLM paper's qualitative prompts (Figures 2-5, Table 2), generated with fixed settings for the report."""

from __future__ import annotations

from lokilm.config import GenerateConfig
from lokilm.generate import generate_batch
from lokilm.tokenizer import decode, encode, eot_id

FACTORIAL = '''Consider the following Python code snippet that is intended to calculate the factorial of a number but returns an error upon execution. Identify the error and suggest the correct modification:

```
def factorial(n):
    if n == 0:
        return 1
    else:
        return n * factorial(n)
    result = factorial(5)
    print(result)
```

The issue with this code is'''

PROMPTS = {
    "french_revolution": "The French Revolution, a pivotal series of events that reshaped European politics, began due to factors such as",
    "quantum_mechanics": "Quantum mechanics, a fundamental theory in physics that describes nature at the smallest scales, is essential for technologies such as",
    "factorial_bug": FACTORIAL,
    "eldoria": "In the mystical realm of Eldoria, the ancient dragons once wielded a powerful magic known as Etherfire, "
               "capable of altering the very fabric of reality. This magic, lost to the ages, was said to",
    # Table 2's prompt is garbled in the paper's text ("A missibility outs response to the question "What is the
    # closed form of the Fiberness"); this is our reading of it
    "mischievous_fibonacci": 'A mischievous response to the question "What is the closed form of the Fibonacci sequence?"\n\n',
}


def qualitative_suite(model, tok, max_new_tokens: int = 120, temperature: float = 0.0, seed: int = 0) -> dict:
    """Each prompt's completion (greedy by default, so the same checkpoint always gives the same text)."""
    ctx = model.cfg.context_length
    settings = GenerateConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=None, top_p=None, seed=seed)
    prompts = []
    for prompt in PROMPTS.values():
        ids = [eot_id(tok)] + encode(tok, prompt)
        # a small model's context may not hold prompt and answer: keep the prompt's end, leave room to answer
        prompts.append(ids[-max(1, ctx - min(max_new_tokens, ctx // 2)):])
    # decoded together; each completion is the one the prompt gets alone (greedy, or every row with `seed`)
    new = generate_batch(model, prompts, settings, tok.get_vocab_size(), stop_id=eot_id(tok))
    samples = [{"name": name, "prompt": prompt, "completion": decode(tok, out), "prompt_tokens_used": len(ids)}
               for (name, prompt), ids, out in zip(PROMPTS.items(), prompts, new)]
    return {"settings": vars(settings), "samples": samples}
