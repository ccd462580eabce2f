-- A seeded sample of judged (prompt, response) pairs: the judge's own real-valued
-- scores, to train it further on (self-distillation).
-- Views: responses, judgments, prompts. Parameters: $n (pairs), $seed.
-- The sample is drawn over ids; texts and probabilities of the $n picked are fetched after.
WITH picked AS MATERIALIZED (
    SELECT r.response_id
    FROM responses r
    JOIN judgments j USING (response_id)
    JOIN prompts p USING (prompt_id)
    ORDER BY hash(r.response_id, $seed), r.response_id
    LIMIT $n
)
SELECT r.response_id, r.prompt_id, p.prompt, r.response, j.score, j.score_int, j.probs
FROM (SELECT * FROM responses WHERE response_id IN (SELECT response_id FROM picked)) r
JOIN (SELECT * FROM judgments WHERE response_id IN (SELECT response_id FROM picked)) j USING (response_id)
JOIN prompts p USING (prompt_id)
ORDER BY hash(r.response_id, $seed), r.response_id
