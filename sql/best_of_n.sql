-- Best-of-n: the top-scored response of every prompt becomes this round's SFT data.
-- Ties are broken by response_id, so the choice is deterministic.
-- Views: responses, judgments (this round), prompts (this round; one row a prompt_id).
-- The ranking runs over ids and scores only; the texts of the K winners are fetched
-- after it, so 10M responses are never sorted with their texts.
WITH ranked AS (
    SELECT r.prompt_id, r.response_id, j.score,
           count(*) OVER (PARTITION BY r.prompt_id) AS n,
           row_number() OVER (PARTITION BY r.prompt_id ORDER BY j.score DESC, r.response_id) AS rank
    FROM responses r
    JOIN judgments j USING (response_id)
    JOIN prompts p USING (prompt_id)
),
best AS MATERIALIZED (SELECT prompt_id, response_id, score, n FROM ranked WHERE rank = 1),
texts AS (
    SELECT response_id, response FROM responses
    WHERE response_id IN (SELECT response_id FROM best)
)
SELECT b.prompt_id, p.prompt, t.response, b.score, 'best_of_n' AS source, b.response_id, b.n
FROM best b
JOIN texts t USING (response_id)
JOIN prompts p USING (prompt_id)
ORDER BY b.prompt_id
