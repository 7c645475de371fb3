"""The loss terms of distillation (Hinton et al. 2015; DistilBERT, Sanh et al. 2019), and a teacher's
per-word targets for NER aligned to a student that cuts words differently."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class WordTargets:
    """A teacher's view of one text for NER: the character span of each of its words and their tag
    log-probabilities, columns in the student's tag order. Teacher and student may cut words and
    pieces differently: a student word takes the row of the teacher word its first character is in."""
    spans: list[tuple[int, int]]  # sorted by start
    logprobs: torch.Tensor  # [words, tags]

    def rows(self, offsets: Sequence[tuple[int, int]], starts: Sequence[bool]) -> torch.Tensor:
        out = torch.full((len(offsets), self.logprobs.shape[1]), float("nan"))
        begins = [s for s, _ in self.spans]
        for i, ((s, _e), first) in enumerate(zip(offsets, starts)):
            if first:
                j = bisect.bisect_right(begins, s) - 1
                if j >= 0 and s < self.spans[j][1]:
                    out[i] = self.logprobs[j]
        return out


@dataclass
class MeanWordTargets:
    """Several teachers' WordTargets for one text: per student word, the log of their mean
    probabilities over the teachers that have a row for it."""
    members: list[WordTargets]

    def rows(self, offsets: Sequence[tuple[int, int]], starts: Sequence[bool]) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0].rows(offsets, starts)
        return torch.stack([m.rows(offsets, starts).exp() for m in self.members]).nanmean(0).log()


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """a * CE + (1 - a) * T^2 * KL(teacher_T || student_T) over the labeled positions."""
    keep = labels != -100
    s, t, y = student[keep].float(), teacher[keep].float(), labels[keep]
    ce = F.cross_entropy(s, y)
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    return alpha * ce + (1 - alpha) * temperature**2 * kl


def soft_target_loss(student: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor, alpha: float,
                     temperature: float) -> torch.Tensor:
    """Per row: a * CE + (1 - a) * T^2 * KL where it has both a label and soft targets, CE alone or
    T^2 * KL alone where it has one of them; the mean over rows that have either."""
    s, t, y = student.reshape(-1, student.shape[-1]).float(), soft.reshape(-1, soft.shape[-1]), labels.reshape(-1)
    has_soft, has_label = ~torch.isnan(t[:, 0]), y != -100
    log_s = F.log_softmax(s / temperature, -1)
    log_t = F.log_softmax(torch.nan_to_num(t) / temperature, -1)
    kl = temperature**2 * (log_t.exp() * (log_t - log_s)).sum(-1)
    ce = F.cross_entropy(s, y.clamp(min=0), reduction="none")
    rows = torch.where(has_soft & has_label, alpha * ce + (1 - alpha) * kl, torch.where(has_label, ce, kl))
    keep = has_soft | has_label
    return rows[keep].mean() if keep.any() else s.sum() * 0.0


def hidden_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """DistilBERT's cosine embedding loss: 1 - cos between the last hidden states, over real tokens."""
    keep = mask.bool()
    return (1 - F.cosine_similarity(student_hidden[keep].float(), teacher_hidden[keep].float(), dim=-1)).mean()
