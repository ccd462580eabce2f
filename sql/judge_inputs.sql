-- What the judge scores in a round: every response with its prompt, in response_id order
-- (the order fixes which responses share a shard).
-- Views: responses, prompts (one round's).
select r.response_id, p.prompt, r.response
from responses r
join prompts p using (prompt_id)
order by r.response_id
