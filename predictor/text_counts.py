"""Word 1-2 gram counts over a fixed vocabulary: sklearn's ``CountVectorizer`` transform, exactly.

``VocabCounts(vocabulary).transform(token_lists)`` equals
``CountVectorizer(ngram_range=(1, 2), vocabulary=vocabulary, dtype=np.float32).transform(docs)``
(same CSR: values, sorted column indices, row pointers) when ``token_lists[i]`` is
``predictor.lexical.scan_prompt(docs[i]).tokens`` (lowercase, the default ``token_pattern``,
no stop words, no accent stripping: the analyzer the featurizer has always used). sklearn's
per-n-gram Python loop took ~70 us per prompt; here every count is a C-level ``Counter`` of the
tokens and of their space-joined neighbour pairs (sklearn's bigram strings), intersected with
the vocabulary's keys. tests/predictor/test_features_scan.py checks it against sklearn.
"""

from __future__ import annotations

from collections import Counter
from itertools import islice

import numpy as np
import scipy.sparse as sp


class VocabCounts:
    """Unigram + bigram counts of token lists over ``vocabulary`` (term -> column)."""

    def __init__(self, vocabulary: dict[str, int]) -> None:
        self.vocabulary = vocabulary

    def transform(
        self, token_lists: list[list[str]], unigrams: list[Counter[str]] | None = None
    ) -> sp.csr_matrix:
        """float32 counts (len(token_lists), V); ``unigrams[i]``: ``Counter(token_lists[i])``
        when the caller has it."""
        vocab = self.vocabulary
        terms = vocab.keys()
        indices: list[int] = []
        values: list[int] = []
        indptr = [0]
        for i, toks in enumerate(token_lists):
            uni = Counter(toks) if unigrams is None else unigrams[i]
            bi = Counter(map(" ".join, zip(toks, islice(toks, 1, None))))
            for counts in (uni, bi):  # no key in both: only bigrams hold a space
                hits = counts.keys() & terms
                indices.extend(map(vocab.__getitem__, hits))
                values.extend(map(counts.__getitem__, hits))
            indptr.append(len(indices))
        X = sp.csr_matrix(
            (
                np.asarray(values, dtype=np.float32),
                np.asarray(indices, dtype=np.int32),
                np.asarray(indptr, dtype=np.int32),
            ),
            shape=(len(token_lists), len(vocab)),
            dtype=np.float32,
        )
        X.sort_indices()  # sklearn sorts too: the column order of each row's sums
        return X
