-- Best-of-n: the top-scored response of every prompt becomes this round's SFT data.
-- Ties are broken by response_id, so the choice is deterministic.
-- Views: responses, judgments (this round), prompts (this round).
SELECT prompt_id, prompt, response, score, 'best_of_n' AS source, response_id, n
FROM (
    SELECT
        r.prompt_id, p.prompt, r.response, r.response_id, j.score,
        count(*) OVER (PARTITION BY r.prompt_id) AS n,
        row_number() OVER (PARTITION BY r.prompt_id ORDER BY j.score DESC, r.response_id) AS rank
    FROM responses r
    JOIN judgments j USING (response_id)
    JOIN prompts p USING (prompt_id)
)
WHERE rank = 1
ORDER BY prompt_id
