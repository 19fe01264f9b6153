// node-postgres (pg) through pg-iam-proxy, run by tests/drivers.rs with PGHOST, PGPORT, PGUSER
// and PGDATABASE pointing at the proxy. Prints one JSON line of what it saw; the Rust test
// asserts on it. Exits non-zero (with the reason on stderr) when a step does not complete.
'use strict';

const { Client } = require('pg');

const STEP_MS = 5000;

// Rejects when `promise` has not settled within STEP_MS.
function within(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${STEP_MS} ms`)), STEP_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

// Polls `condition` until it is true, at most STEP_MS.
async function until(condition, what) {
  const deadline = Date.now() + STEP_MS;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${STEP_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function main() {
  const client = new Client({ connectionTimeoutMillis: STEP_MS });
  const other = new Client({ connectionTimeoutMillis: STEP_MS });
  await client.connect();
  await other.connect();
  const out = { processID: client.processID };
  out.backendPid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;

  // The "ignore my own NOTIFY" idiom compares msg.processId with client.processID.
  const notified = new Promise((resolve) => client.once('notification', resolve));
  await client.query('LISTEN driver_test');
  await client.query("NOTIFY driver_test, 'to self'");
  const msg = await within(notified, 'NOTIFY to self');
  out.notifyProcessId = msg.processId;
  out.notifyPayload = msg.payload;
  out.own = msg.processId === client.processID;

  // Cancel from a second connection by the pid the driver was given.
  const sleeping = client.query('SELECT pg_sleep(60)').then(() => null, (e) => e);
  const active = () =>
    other
      .query("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND query LIKE 'SELECT pg_sleep%'" +
        " AND state = 'active'", [client.processID])
      .then((r) => r.rowCount === 1);
  await until(active, 'the pg_sleep query running on the backend client.processID names');
  const cancel = await other.query('SELECT pg_cancel_backend($1) AS sent', [client.processID]);
  out.cancelSent = cancel.rows[0].sent;
  const err = await within(sleeping, 'the cancelled query');
  out.cancelCode = err ? err.code : 'completed';
  out.afterCancel = (await client.query('SELECT 1 AS one')).rows[0].one;

  await client.end();
  await other.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.error(`node-postgres through the proxy: ${e.stack || e}`);
  process.exit(1);
});
