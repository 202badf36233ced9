// The web app in a real browser: Debian's Chromium, driven by playwright-core, run by crates/cli/tests/it/browser.rs.
// Every page visited is checked with axe-core (no serious or critical violation) and for Content-Security-Policy
// violations the browser reports. The test process owns the world (the hub, the simulated device, the mail
// outbox): this script asks it for what a person would get elsewhere, one JSON line on stdout per question, and
// reads one JSON line per answer on stdin. It ends with {"done": [pages checked]} or exits non-zero.
import { chromium } from 'playwright-core';
import { readFileSync, mkdirSync } from 'node:fs';
import readline from 'node:readline';

const cfg = JSON.parse(process.env.HEARTH_BROWSER_CONFIG);
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(question, args = {}) {
  process.stdout.write(JSON.stringify({ ask: question, ...args }) + '\n');
  const { value, done } = await lines.next();
  if (done) throw new Error(`no answer to ${question}`);
  const answer = JSON.parse(value);
  if (answer.error) throw new Error(`${question}: ${answer.error}`);
  return answer;
}
const log = (...a) => console.error('[browser]', ...a);

const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');
const args = [`--ignore-certificate-errors-spki-list=${cfg.spki.join(',')}`];
if (process.getuid && process.getuid() === 0) args.push('--no-sandbox');
const browser = await chromium.launch({ executablePath: cfg.chromium, args });
const checked = [];
let current = null;
const DESKTOP = { width: 1280, height: 860 };
const PHONE = { width: 390, height: 844 };

async function newPage(viewport = DESKTOP) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  // Registered through the DevTools protocol, so the page's own CSP does not block it.
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  current = page;
  page.__console = [];
  page.on('console', (m) => { if (/Content.Security.Policy|Refused to/i.test(m.text())) page.__console.push(m.text()); });
  page.on('pageerror', (e) => page.__console.push(`page error: ${e.message}`));
  if (process.env.HEARTH_BROWSER_DEBUG) {
    page.on('response', (r) => log(r.request().method(), r.url(), r.status()));
    page.on('console', (m) => log('console:', m.text()));
  }
  return page;
}

/** Accessibility and CSP checks of the page as it is now; `name` goes into the report. */
async function check(page, name) {
  await page.evaluate(axeSource);
  const result = await page.evaluate(async () => await window.axe.run(document, { resultTypes: ['violations'] }));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    throw new Error(`${name} (${page.url()}): accessibility violations: ` +
      JSON.stringify(bad.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target) }))));
  }
  const csp = (await page.evaluate(() => window.__csp)).concat(page.__console);
  if (csp.length) throw new Error(`${name} (${page.url()}): CSP violations: ${JSON.stringify(csp)}`);
  const header = (await page.request.get(page.url(), { maxRedirects: 0 }).catch(() => null))?.headers()['content-security-policy'];
  if (header !== undefined && !header.includes("default-src 'none'")) throw new Error(`${name}: weak CSP ${header}`);
  checked.push(name);
}

/** A virtual authenticator for `page`: CTAP2, built in, with discoverable credentials and user verification. */
async function authenticator(page) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, automaticPresenceSimulation: true },
  });
  return { cdp, id: authenticatorId };
}

async function shot(page, name) {
  if (!cfg.screenshots) return;
  mkdirSync(cfg.screenshots, { recursive: true });
  await page.screenshot({ path: `${cfg.screenshots}/${name}.png`, fullPage: true });
}

async function go(page, path) {
  const response = await page.goto(cfg.base + path);
  return response.status();
}

async function expectText(page, selector, text) {
  const got = await page.locator(selector).first().innerText();
  if (!got.includes(text)) throw new Error(`${page.url()}: ${selector} says ${JSON.stringify(got)}, not ${JSON.stringify(text)}`);
}

async function signIn(page, email, password) {
  await go(page, '/sign-in');
  await page.fill('#email', email);
  await page.fill('#password', password);
  await Promise.all([page.waitForURL('**/devices'), page.click('button[type=submit]')]);
}

async function signOut(page) {
  await Promise.all([page.waitForURL('**/sign-in?notice=signed-out'), page.click('form.signout button')]);
}

try {
  const page = await newPage();
  // Before setup: the pages anyone sees.
  for (const [path, name] of [['/sign-in', 'sign in'], ['/sign-up', 'sign up'], ['/forgot', 'forgot password'], ['/setup', 'setup']]) {
    if ((await go(page, path)) !== 200) throw new Error(`${path} did not answer 200`);
    await check(page, name);
  }
    await go(page, '/sign-in');
  await shot(page, 'sign-in-desktop');

  // Owner setup with the one-time token: a wrong token is refused next to its field, then the right one works.
  await go(page, '/setup');
  await page.fill('#setup_token', 'hst_wrong');
  await page.fill('#email', cfg.owner.email);
  await page.fill('#password', cfg.owner.password);
  await page.click('button[type=submit]');
  await expectText(page, '#token-error', 'setup token');
  await check(page, 'setup refused');
  await page.fill('#setup_token', cfg.setupToken);
  await page.fill('#password', cfg.owner.password);
  await Promise.all([page.waitForURL('**/sign-in?notice=setup-done'), page.click('button[type=submit]')]);

  // The owner: fleet, security events, audit log, accounts.
  await signIn(page, cfg.owner.email, cfg.owner.password);
  await check(page, 'fleet (empty)');
  const device = await ask('device');
  await go(page, '/devices');
  await expectText(page, 'table', device.device_id);
  await check(page, 'fleet');
  await shot(page, 'fleet-desktop');
  for (const [path, name] of [['/security-events', 'security events'], ['/audit-log', 'audit log'], ['/accounts', 'accounts']]) {
    await go(page, path);
    await check(page, name);
  }
  await shot(page, 'accounts-desktop');
  // Updates: a signed release, its support period, and a rollout the owner pauses and resumes.
  await ask('rollout');
  await go(page, '/updates');
  await expectText(page, '#releases', 'Closes a crash over the local network.');
  await expectText(page, '#support', 'Security fixes for three years.');
  await expectText(page, '#rollouts', 'running');
  await check(page, 'updates');
  await Promise.all([page.waitForURL('**/updates?notice=pause'), page.click('#rollouts form[action$="/pause"] button')]);
  await expectText(page, '#rollouts', 'paused by');
  await check(page, 'rollout paused');
  await shot(page, 'updates-desktop');
  await Promise.all([page.waitForURL('**/updates?notice=resume'), page.click('#rollouts form[action$="/resume"] button')]);
  await expectText(page, '#rollouts', 'running');
  await go(page, `/devices/${device.device_id}`);
  await check(page, 'device (operator)');
  await signOut(page);

  // A consumer signs up: a weak password is refused with the reason next to the field.
  await go(page, '/sign-up');
  await page.fill('#email', cfg.consumer.email);
  await page.fill('#password', 'password1234');
  await page.click('button[type=submit]');
  await expectText(page, '#password-error', 'most-used');
  await check(page, 'sign up refused');
  await page.fill('#password', cfg.consumer.password);
  await page.click('button[type=submit]');
  await expectText(page, 'h1', 'Check your email');
  await check(page, 'check your email');
    const mail = await ask('mail', { to: cfg.consumer.email });
  await page.goto(mail.link);
  await check(page, 'confirm email');
  // The link confirms with the password chosen at sign-up, and signs in.
  await page.fill('#password', cfg.consumer.password);
  await Promise.all([page.waitForURL('**/devices?notice=verified'), page.click('main form button[type=submit]')]);
  await check(page, 'my devices (empty)');

    // Scanning the label while signed out: sign in, and the claim page comes back with the code.
  await signOut(page);
  await go(page, `/claim?code=${encodeURIComponent(device.claim_code)}`);
  if (!page.url().includes('/sign-in?next=')) throw new Error(`not sent to sign in: ${page.url()}`);
  await page.fill('#email', cfg.consumer.email);
  await page.fill('#password', cfg.consumer.password);
  await Promise.all([page.waitForURL('**/claim?code=*'), page.click('main form button[type=submit]')]);
  // Claims the device by its code, as its label's QR code opens the page.
  await go(page, `/claim?code=${encodeURIComponent(device.claim_code)}`);
  await check(page, 'claim');
  if ((await page.inputValue('#code')) !== device.claim_code) throw new Error('the QR link did not fill in the code');
  await Promise.all([page.waitForURL(`**/devices/${device.device_id}`), page.click('main button[type=submit]')]);
  await ask('telemetry', { device_id: device.device_id });
  await page.reload();
  const drawn = await page.locator('svg.chart polyline, svg.chart circle').count();
  if (drawn < 1) throw new Error('no telemetry chart');
  await check(page, 'device with chart');
  await shot(page, 'device-desktop');

  // Sends a command and sees the device's answer.
  await page.check('input[value=set_interval]');
  await page.fill('#seconds', '5');
  await Promise.all([page.waitForURL('**?command=*'), page.click('form[action$="/command"] button')]);
  let status = '';
  for (let i = 0; i < 50 && !status.includes(': ok'); i++) {
    await page.waitForTimeout(200);
    await page.reload();
    status = await page.locator('#command-status').innerText();
  }
  if (!status.includes('interval is now 5 s')) throw new Error(`the command was not answered: ${status}`);
  await check(page, 'device after a command');

  // The update the rollout holds for the device: what it fixes, and postponing it within the limits.
  await expectText(page, '#pending-update', 'Update to 1.1.0 (security)');
  await expectText(page, '#pending-update', 'Closes a crash over the local network.');
  await page.selectOption('#days', '2');
  await Promise.all([page.waitForURL('**?update=postponed'), page.click('form[action$="/postpone"] button')]);
  await expectText(page, '#pending-update', 'postponed until');
  await check(page, 'device with an update postponed');

  await go(page, '/account');
  await check(page, 'account');
  await shot(page, 'account-desktop');

  // Phone width: the same pages, still usable.
  const phone = await newPage(PHONE);
  await signIn(phone, cfg.consumer.email, cfg.consumer.password);
  await check(phone, 'my devices (phone)');
  await shot(phone, 'devices-phone');
  await go(phone, `/devices/${device.device_id}`);
  await check(phone, 'device (phone)');
  await shot(phone, 'device-phone');
  await go(phone, '/account');
  await check(phone, 'account (phone)');
  await shot(phone, 'account-phone');

  // Releases the device: it is wiped, the agent confirms, and it is no longer the consumer's.
  await go(page, `/devices/${device.device_id}`);
  await Promise.all([page.waitForURL('**/devices?notice=released'), page.click('form[action$="/unclaim"] button')]);
  await check(page, 'released');
  if ((await page.locator(`a[href="/devices/${device.device_id}"]`).count()) !== 0) throw new Error('still listed');
  const wiped = await ask('wiped', { device_id: device.device_id });
  if ((await go(page, `/devices/${device.device_id}`)) !== 404) throw new Error('the released device is still visible');
  await check(page, 'not found');
  await go(page, '/devices');
  await signOut(page);

    // Passkeys, through Chromium's virtual authenticator (CTAP2, built in, discoverable credentials, user
  // verification): a consumer signs up with a passkey and no password, confirms by mail, signs in with it.
  const pk = await newPage();
  const consumerKey = await authenticator(pk);
  await go(pk, '/sign-up');
  await pk.fill('#email', cfg.passkeyUser);
  await Promise.all([pk.waitForURL('**/check-email'), pk.click('button[data-passkey=sign-up]')]);
  await check(pk, 'check your email (passkey)');
    const mail2 = await ask('mail', { to: cfg.passkeyUser });
  await pk.goto(mail2.link);
  await check(pk, 'confirm email (passkey button)');
  // Before confirming, the passkey signs in to nothing.
  await go(pk, '/sign-in');
  await pk.click('button[data-passkey=sign-in]');
    await pk.locator('#passkey-status').filter({ hasText: 'does not sign in' }).waitFor({ timeout: 10000 });
  // The link and the passkey together confirm the email and sign in.
  await pk.goto(mail2.link);
  await Promise.all([pk.waitForURL('**/devices?notice=verified'), pk.click('button[data-passkey=verify]')]);
  await check(pk, 'confirmed with a passkey');
  await signOut(pk);
  await check(pk, 'sign in (passkey button)');
  await Promise.all([pk.waitForURL('**/devices'), pk.click('button[data-passkey=sign-in]')]);
  await check(pk, 'signed in with a passkey');
  const held = await consumerKey.cdp.send('WebAuthn.getCredentials', { authenticatorId: consumerKey.id });
  if (held.credentials.length !== 1 || !held.credentials[0].isResidentCredential) {
    throw new Error(`the authenticator should hold one discoverable passkey: ${JSON.stringify(held)}`);
  }
  // The owner adds a passkey; from then on a password sign-in is confirmed with it.
  const op = await newPage();
  await authenticator(op);
  await signIn(op, cfg.owner.email, cfg.owner.password);
  await go(op, '/account');
  await op.fill('#passkey-name', 'laptop');
  await Promise.all([op.waitForURL('**/account?notice=passkey-added'), op.click('button[data-passkey=add]')]);
  await expectText(op, 'ul.passkeys', 'laptop');
  await check(op, 'account with a passkey');
  await signOut(op);
  await go(op, '/sign-in');
  await op.fill('#email', cfg.owner.email);
  await op.fill('#password', cfg.owner.password);
  await op.click('main form button[type=submit]');
  await expectText(op, 'h1', 'Confirm it is you');
  await check(op, 'second factor');
    // The right password alone is no session.
  await go(op, '/devices');
  if (!op.url().includes('/sign-in')) throw new Error(`signed in before the second factor: ${op.url()}`);
  await op.fill('#email', cfg.owner.email);
  await op.fill('#password', cfg.owner.password);
  await op.click('main form button[type=submit]');
  await Promise.all([op.waitForURL('**/devices'), op.click('button[data-passkey=second-factor]')]);
  await check(op, 'fleet after the second factor');

  // The owner (signed in with password and passkey) sees the device's confirmation.
  await go(op, `/devices/${device.device_id}`);
  await expectText(op, 'dl.facts', 'confirmed by the device');
  await check(op, 'device wiped (operator)');
  await op.setViewportSize(PHONE);
  await go(op, '/devices');
  await check(op, 'fleet (phone)');
  await shot(op, 'fleet-phone');
  process.stdout.write(JSON.stringify({ done: checked, wiped_at: wiped.wiped_at }) + '\n');
  await browser.close();
  process.exit(0);
} catch (e) {
  log(e.stack || String(e));
  if (current) log('the page was', current.url(), await current.locator('main').innerText().catch(() => '?'));
  process.stdout.write(JSON.stringify({ failed: String(e.message || e) }) + '\n');
  await browser.close().catch(() => {});
  process.exit(1);
}
