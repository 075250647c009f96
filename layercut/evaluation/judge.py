"""An optional LLM judge for generated answers: any OpenAI-compatible chat endpoint.

`judge(url, question, gold, response)` asks the endpoint whether the response answers the
question with the gold answer and reads "CORRECT" / "INCORRECT" from the reply. Plain urllib, no
new dependency; the key, if the endpoint needs one, comes from $LAYERCUT_JUDGE_API_KEY. The
rule-based extractors stay the default: a judge is slower, not reproducible offline, and itself a
model with errors.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request

from layercut.errors import LayercutError

SYSTEM = (
    "You grade answers. Given a question, the reference answer and a model's response, reply "
    "with exactly one word: CORRECT if the response's final answer is equivalent to the "
    "reference answer, INCORRECT otherwise."
)


def judge(url: str, question: str, gold: str, response: str, *, model: str = "judge",
          timeout: float = 60.0) -> bool:
    """True when the endpoint says the response's final answer matches the gold answer."""
    endpoint = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
    body = {
        "model": model,
        "temperature": 0,
        "max_tokens": 8,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Question: {question}\nReference answer: {gold}\n"
                                        f"Response: {response}\nVerdict:"},
        ],
    }
    headers = {"Content-Type": "application/json"}
    key = os.environ.get("LAYERCUT_JUDGE_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            data = json.loads(reply.read().decode("utf-8"))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise LayercutError(f"the judge at {endpoint} did not answer ({exc}): check --judge-url "
                            "or drop it to use the rule-based extractors") from None
    except json.JSONDecodeError:
        raise LayercutError(f"the judge at {endpoint} did not return JSON: is it an "
                            "OpenAI-compatible chat endpoint?") from None
    try:
        verdict = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LayercutError(f"the judge at {endpoint} returned no choices[0].message.content: "
                            "is it an OpenAI-compatible chat endpoint?") from None
    words = re.findall(r"[A-Z]+", str(verdict).upper())
    return bool(words) and words[0] == "CORRECT"
