"""A custom Runnable (the seed documents' sentiment example, with a word list standing in for
NLTK's analyser so that it runs anywhere).

    python examples/custom_runnable.py
"""

from __future__ import annotations

from statistics import mean

import runnerlib

POSITIVE = {"good", "great", "love", "excellent", "happy", "fine", "nice"}
NEGATIVE = {"bad", "awful", "hate", "terrible", "sad", "poor", "broken"}


class SentimentAnalysisRunnable(runnerlib.Runnable):
    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self) -> None:
        # loading a real analyser would happen here, once per worker
        self.positive, self.negative = POSITIVE, NEGATIVE

    def polarity(self, sentence: str) -> float:
        words = [w.strip(".,!?").lower() for w in sentence.split()]
        score = sum(w in self.positive for w in words) - sum(w in self.negative for w in words)
        return score / max(len(words), 1)

    @runnerlib.Runnable.method(batchable=False)
    def is_positive(self, input_text: str) -> bool:
        sentences = [s for s in input_text.split(".") if s.strip()]
        return mean(self.polarity(s) for s in sentences) > 0


sentiment_runner = runnerlib.Runner(SentimentAnalysisRunnable, name="sentiment")


def analysis(input_text: str) -> dict[str, bool]:
    """What an HTTP endpoint would do with the runner."""
    return {"is_positive": sentiment_runner.is_positive.run(input_text)}


def main() -> None:
    sentiment_runner.init_local(quiet=True)
    print("local:", analysis("What a great day. I love it."))
    sentiment_runner.destroy()

    with runnerlib.Server([sentiment_runner]):
        sentiment_runner.init_client(spawn=False)
        assert analysis("What a great day. I love it.") == {"is_positive": True}
        assert analysis("This is awful. I hate broken things.") == {"is_positive": False}
        print("remote:", analysis("This is awful. I hate broken things."))
        sentiment_runner.destroy()
    print("ok")


if __name__ == "__main__":
    main()
