// The peer of loadtest/dispatch_bench.sh: graphile-worker on the same PostgreSQL. Adds $JOBS no-op
// jobs in bulk (WorkerUtils.addJobs: one statement), then runs a worker pool of $CONCURRENCY until
// every job is done, timed from the start of the pool to the last completion written to the
// database (the pool's stop flushes a pending completion batch) → jobs/s. Also the CPU seconds of
// this node process and of the PostgreSQL cluster (postmaster $PG_PID and all its children, read
// by ../cpu.py) over the run. Prints one JSON line.
//
//   DATABASE_URL=postgres://… PG_PID=1234 [JOBS=20000] [CONCURRENCY=16] [POOL_SIZE=…] node bench.js default|batched
//
// `default`: graphile-worker's defaults but the concurrency. `batched`: its published batching
// settings (https://worker.graphile.org/docs/performance#batching), option names as in this
// version's types (dist/index.d.ts, GraphileConfig.WorkerOptions): localQueue.size 500,
// localQueue.refetchDelay.durationMs 10, completeJobBatchDelay 0, failJobBatchDelay 0.
"use strict";
const { execFileSync } = require("node:child_process");
const path = require("node:path");
const { run, makeWorkerUtils, Logger } = require("graphile-worker");

const mode = process.argv[2] || "default";
const connectionString = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS || 20000);
const concurrency = Number(process.env.CONCURRENCY || 16);
const pgPid = process.env.PG_PID;
// maxPoolSize (PostgreSQL connections of the pool): graphile-worker's default (10) unless set.
const poolSize = process.env.POOL_SIZE ? Number(process.env.POOL_SIZE) : undefined;
if (!connectionString || !["default", "batched"].includes(mode)) {
  console.error("usage: DATABASE_URL=… [PG_PID=…] [JOBS=20000] [CONCURRENCY=16] node bench.js default|batched");
  process.exit(2);
}

const BATCHED = {
  localQueue: { size: 500, refetchDelay: { durationMs: 10 } },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
};

// Warnings and errors only: a log line per job would measure the console (our replicas run at
// TASKQUEUE_LOG=warn alike).
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile ${level}: ${message}`);
});

const pgCpu = () =>
  pgPid ? Number(execFileSync("python3", [path.join(__dirname, "..", "cpu.py"), "--tree", pgPid]).toString()) : 0;
const nodeCpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function main() {
  const utils = await makeWorkerUtils({ connectionString, logger });
  await utils.migrate();
  await utils.withPgClient((c) => c.query("DELETE FROM graphile_worker._private_jobs"));
  const t0 = process.hrtime.bigint();
  await utils.addJobs(Array.from({ length: jobs }, (_, i) => ({ identifier: "noop", payload: { i } })));
  const addSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await utils.withPgClient((c) => c.query("VACUUM ANALYZE graphile_worker._private_jobs"));

  let done = 0;
  let allDone;
  const finished = new Promise((resolve) => (allDone = resolve));
  const taskList = {
    noop: async () => {
      if (++done === jobs) allDone();
    },
  };
  const pg0 = pgCpu();
  const node0 = nodeCpu();
  const start = process.hrtime.bigint();
  const runner = await run({
    connectionString,
    concurrency,
    ...(poolSize ? { maxPoolSize: poolSize } : {}),
    noHandleSignals: true,
    logger,
    taskList,
    preset: { worker: mode === "batched" ? BATCHED : {} },
  });
  await finished;
  // The last task function returned; its completion (and, batched, the pending batch) is written
  // by the pool's graceful stop, which waits for it.
  await runner.stop();
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const nodeS = nodeCpu() - node0;
  const pgS = pgCpu() - pg0;
  const left = await utils.withPgClient((c) => c.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs"));
  await utils.release();
  const version = require("graphile-worker/package.json").version;
  console.log(
    JSON.stringify({
      peer: "graphile-worker",
      version,
      mode,
      jobs,
      concurrency,
      max_pool_size: poolSize ?? "default (10)",
      add_jobs_s: addSeconds,
      seconds,
      jobs_per_s: jobs / seconds,
      node_cpu_s: nodeS,
      pg_cpu_s: pgS,
      node_cpu_us_per_job: (nodeS * 1e6) / jobs,
      pg_cpu_us_per_job: (pgS * 1e6) / jobs,
      jobs_left: left.rows[0].n,
    }),
  );
  if (left.rows[0].n !== 0) process.exitCode = 1;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
