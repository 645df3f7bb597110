-- Durable queues for the one-machine shape, with SQS's semantics.
--
-- On AWS the step and callback messages travel on SQS and these tables stay empty. On one machine (`babychain
-- serve`, with the embedded Postgres or any DATABASE_URL) they are the queues: a message survives a crash, several
-- worker processes share a queue, and the handlers cannot tell it from SQS:
--   * delay: a message is invisible until `visible_at`;
--   * receive: it becomes invisible for the visibility timeout, its receive count goes up and it gets a new receipt;
--   * delete: only with the current receipt (a consumer whose lease ran out cannot delete a redelivered copy);
--   * redrive: a message already received `max_receives` times moves to the dead letters instead of being delivered.
-- A consumer holds the advisory lock (7272, receiver) while it lives; `bc_queue_release_orphans` makes the messages
-- of consumers that died (kill -9, a crash) visible at once, instead of after their visibility timeout.
--
-- Like every RPC function (see the first migration): `security definer`, `search_path = ''`, schema-qualified
-- names, execute for service_role only.

create table public.bc_queue_messages (
    id                bigint generated always as identity primary key,
    queue             text not null,
    body              jsonb not null,
    sent_at           timestamptz not null default now(),
    visible_at        timestamptz not null default now(),
    receive_count     integer not null default 0,
    first_received_at timestamptz,
    receipt           uuid,
    receiver          integer,
    constraint bc_queue_messages_queue_name check (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    constraint bc_queue_messages_receiver_positive check (receiver is null or receiver > 0),
    -- A receive stamps these together (the count, the first receive time, a fresh receipt); a message held by a
    -- consumer has been received.
    constraint bc_queue_messages_received_fields
        check ((receive_count > 0) = (receipt is not null) and (receive_count > 0) = (first_received_at is not null)),
    constraint bc_queue_messages_receiver_has_receipt check (receiver is null or receipt is not null),
    constraint bc_queue_messages_receive_count_not_negative check (receive_count >= 0)
);

-- A queue table churns (every message is inserted, updated and deleted): vacuum it often, or receives walk an
-- index head of dead entries.
alter table public.bc_queue_messages set (
    autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0
);

-- Due messages of a queue in order (receive), and the time until the next one (consumers sleep until then).
create index bc_queue_messages_due on public.bc_queue_messages (queue, visible_at);
-- Messages held by a consumer (orphan release).
create index bc_queue_messages_held on public.bc_queue_messages (receiver) where receiver is not null;

create table public.bc_queue_dead_letters (
    id            bigint primary key,
    queue         text not null,
    body          jsonb not null,
    sent_at       timestamptz not null,
    receive_count integer not null,
    dead_at       timestamptz not null default now(),
    constraint bc_queue_dead_letters_queue_name check (queue ~ '^[a-z][a-z0-9_]{0,62}$'),
    constraint bc_queue_dead_letters_receive_count_not_negative check (receive_count >= 0)
);

-- {queue, messages: [{body, delay_seconds}]} -> number sent. Consumers LISTEN on bc_queue_<queue>.
create function public.bc_queue_send(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
    v_count integer;
begin
    insert into public.bc_queue_messages (queue, body, visible_at)
    select p->>'queue', m->'body',
           -- SQS's delay bounds: 0 to 15 minutes.
           now() + make_interval(secs => least(greatest(coalesce((m->>'delay_seconds')::float8, 0), 0), 900))
      from jsonb_array_elements(p->'messages') as m;
    get diagnostics v_count = row_count;
    perform pg_notify('bc_queue_' || (p->>'queue'), '');
    return to_jsonb(v_count);
end
$$;

-- {queue, max_messages, visibility_timeout_seconds, max_receives, receiver, ack?: {id, receipt}}
--   -> {messages: [{id, body, receive_count, receipt, sent_at, first_received_at}], next_visible_in_seconds}
-- next_visible_in_seconds: when nothing was received, the wait until the next message becomes visible (null when the
-- queue is empty). `ack` deletes the consumer's previous message (as bc_queue_delete) in the same statement: one
-- round trip and one commit fewer per message.
create function public.bc_queue_receive(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    with acked as (
        delete from public.bc_queue_messages
         where p ? 'ack'
           and id = (p->'ack'->>'id')::bigint and queue = p->>'queue' and receipt = (p->'ack'->>'receipt')::uuid
    ), due as (
        select id
          from public.bc_queue_messages
         where queue = p->>'queue' and visible_at <= now()
         order by visible_at, id
         limit coalesce((p->>'max_messages')::int, 1)
           for update skip locked
    ), dead as (
        delete from public.bc_queue_messages m
         using due
         where m.id = due.id and m.receive_count >= (p->>'max_receives')::int
        returning m.id, m.queue, m.body, m.sent_at, m.receive_count
    ), buried as (
        insert into public.bc_queue_dead_letters (id, queue, body, sent_at, receive_count)
        select id, queue, body, sent_at, receive_count from dead
    ), received as (
        update public.bc_queue_messages m
           set visible_at = now() + babychain_private.bc_seconds(p->>'visibility_timeout_seconds'),
               receive_count = m.receive_count + 1,
               first_received_at = coalesce(m.first_received_at, now()),
               receipt = gen_random_uuid(),
               receiver = (p->>'receiver')::int
          from due
         where m.id = due.id and m.receive_count < (p->>'max_receives')::int
        returning m.id, m.body, m.receive_count, m.receipt, m.sent_at, m.first_received_at
    )
    select jsonb_build_object(
        'messages', coalesce((select jsonb_agg(to_jsonb(r) order by r.id) from received r), '[]'::jsonb),
        -- Only when nothing was received (a busy consumer does not need it, and the lookup walks the index head).
        -- The statement's snapshot still shows the rows it buried as they were, so those are skipped.
        'next_visible_in_seconds', case when not exists (select from received) then extract(epoch from (
            select m.visible_at
              from public.bc_queue_messages m
             where m.queue = p->>'queue' and m.id not in (select id from due)
             order by m.visible_at
             limit 1
        ) - now()) end
    )
$$;

-- {queue, id, receipt} -> true when deleted (false: the receipt is stale, the message was received again).
create function public.bc_queue_delete(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    with gone as (
        delete from public.bc_queue_messages
         where id = (p->>'id')::bigint and queue = p->>'queue' and receipt = (p->>'receipt')::uuid
        returning 1
    )
    select to_jsonb(exists (select from gone))
$$;

-- {queue, id, receipt, visibility_timeout_seconds} -> true when changed (ChangeMessageVisibility).
create function public.bc_queue_change_visibility(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    with changed as (
        update public.bc_queue_messages
           set visible_at = now() + babychain_private.bc_seconds(p->>'visibility_timeout_seconds'),
               receiver = null
         where id = (p->>'id')::bigint and queue = p->>'queue' and receipt = (p->>'receipt')::uuid
        returning 1
    )
    select to_jsonb(exists (select from changed))
$$;

-- {} -> number of messages made visible again because the consumer holding them is gone (its lock was released).
create function public.bc_queue_release_orphans(p jsonb) returns jsonb
language plpgsql security definer set search_path = '' as $$
-- `p` is unused: every RPC function takes one jsonb argument. Tells plpgsql_check (`supabase db lint`) so.
-- @plpgsql_check_options: extra_warnings = false
declare
    v_count integer;
begin
    update public.bc_queue_messages m
       set visible_at = now(), receiver = null
     where m.receiver is not null
       and m.visible_at > now()
       and not exists (
           select from pg_locks l
            where l.locktype = 'advisory' and l.granted
              and l.database = (select oid from pg_database where datname = current_database())
              and l.classid = 7272 and l.objid = m.receiver::oid and l.objsubid = 2
       );
    get diagnostics v_count = row_count;
    if v_count > 0 then
        perform pg_notify('bc_queue_' || q.queue, '') from (select distinct queue from public.bc_queue_messages) q;
    end if;
    return to_jsonb(v_count);
end
$$;

-- {queue} -> {visible, in_flight, delayed, dead}: what an operator (and the tests) can see of a queue.
create function public.bc_queue_stats(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    select jsonb_build_object(
        'visible', count(*) filter (where visible_at <= now()),
        'in_flight', count(*) filter (where visible_at > now() and receive_count > 0 and receiver is not null),
        'delayed', count(*) filter (where visible_at > now() and receiver is null),
        'dead', (select count(*) from public.bc_queue_dead_letters d where d.queue = p->>'queue')
    )
      from public.bc_queue_messages
     where queue = p->>'queue'
$$;

-- {queue} -> the dead letters' bodies, oldest first.
create function public.bc_queue_dead_letters(p jsonb) returns jsonb
language sql security definer set search_path = '' as $$
    select coalesce(jsonb_agg(body order by dead_at, id), '[]'::jsonb)
      from public.bc_queue_dead_letters
     where queue = p->>'queue'
$$;

grant execute on function
    public.bc_queue_send(jsonb), public.bc_queue_receive(jsonb), public.bc_queue_delete(jsonb),
    public.bc_queue_change_visibility(jsonb), public.bc_queue_release_orphans(jsonb), public.bc_queue_stats(jsonb),
    public.bc_queue_dead_letters(jsonb)
to service_role;

-- Only the engine reaches the queues (see the row level security migration).
alter table public.bc_queue_messages enable row level security;
alter table public.bc_queue_dead_letters enable row level security;
revoke all on table public.bc_queue_messages, public.bc_queue_dead_letters from anon, authenticated;
grant select, insert, update, delete on table public.bc_queue_messages, public.bc_queue_dead_letters to service_role;
grant usage, select on sequence public.bc_queue_messages_id_seq to service_role;
