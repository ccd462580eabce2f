-- A seeded sample of judged (prompt, response) pairs: the judge's own real-valued
-- scores, to train it further on (self-distillation).
-- Views: responses, judgments, prompts. Parameters: $n (pairs), $seed.
SELECT r.response_id, r.prompt_id, p.prompt, r.response, j.score, j.score_int, j.probs
FROM responses r
JOIN judgments j USING (response_id)
JOIN prompts p USING (prompt_id)
ORDER BY hash(r.response_id, $seed), r.response_id
LIMIT $n
