// Passkeys in the web app: the only script, loaded from this hub (the CSP allows no other). Buttons carry what
// they do in data- attributes; everything else works without this file.
'use strict';

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || '';

async function post(url, body) {
  const response = await fetch(url, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', 'x-csrf-token': csrf() },
    body: JSON.stringify(body ?? {}),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) throw new Error(json.error?.message || `${response.status} ${response.statusText}`);
  return json;
}

// WebAuthn JSON (base64url) to and from the browser's binary form.
const fromB64 = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(s.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
const toB64 = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

function creationOptions(options) {
  const pk = structuredClone(options.publicKey);
  // A passkey signs in without an email: it must be discoverable.
  pk.authenticatorSelection = { ...(pk.authenticatorSelection || {}), residentKey: 'required', requireResidentKey: true };
  if (PublicKeyCredential.parseCreationOptionsFromJSON) return PublicKeyCredential.parseCreationOptionsFromJSON(pk);
  pk.challenge = fromB64(pk.challenge);
  pk.user.id = fromB64(pk.user.id);
  pk.excludeCredentials = (pk.excludeCredentials || []).map((c) => ({ ...c, id: fromB64(c.id) }));
  return pk;
}

function requestOptions(options) {
  const pk = structuredClone(options.publicKey);
  if (PublicKeyCredential.parseRequestOptionsFromJSON) return PublicKeyCredential.parseRequestOptionsFromJSON(pk);
  pk.challenge = fromB64(pk.challenge);
  pk.allowCredentials = (pk.allowCredentials || []).map((c) => ({ ...c, id: fromB64(c.id) }));
  return pk;
}

function toJSON(credential) {
  if (credential.toJSON) return credential.toJSON();
  const r = credential.response;
  const response = { clientDataJSON: toB64(r.clientDataJSON) };
  if (r.attestationObject) response.attestationObject = toB64(r.attestationObject);
  if (r.authenticatorData) response.authenticatorData = toB64(r.authenticatorData);
  if (r.signature) response.signature = toB64(r.signature);
  if (r.userHandle) response.userHandle = toB64(r.userHandle);
  return { id: credential.id, rawId: toB64(credential.rawId), type: credential.type, response, clientExtensionResults: credential.getClientExtensionResults() };
}

async function create(options) {
  return toJSON(await navigator.credentials.create({ publicKey: creationOptions(options) }));
}

async function get(options) {
  // Modal, not conditional (autofill) mediation: the person pressed a button.
  return toJSON(await navigator.credentials.get({ publicKey: requestOptions(options) }));
}

// Where to go after signing in: a path on this hub only (the server checked it too).
const next = (button) => {
  const path = button.dataset.next || '/devices';
  return path.startsWith('/') && !path.startsWith('//') && !path.includes('\\') ? path : '/devices';
};

const actions = {
  // Sign in with a passkey (no email).
    async 'sign-in'(button) {
    const started = await post('/api/v1/sessions/passkey/start');
    await post('/api/v1/sessions/passkey/finish', { ceremony_id: started.ceremony_id, credential: await get(started.options) });
    location.assign(next(button));
  },
  // Confirm a passkey sign-up's email: the link's token and the passkey together.
  async verify(button) {
    const started = await post('/api/v1/sessions/passkey/start');
    await post('/api/v1/sessions/passkey/finish', {
      ceremony_id: started.ceremony_id, credential: await get(started.options), verify_token: button.dataset.token,
    });
    location.assign('/devices?notice=verified');
  },
  // Confirm an operator's password sign-in.
  async 'second-factor'(button) {
    const options = JSON.parse(button.dataset.options);
        await post('/api/v1/sessions/second-factor', { ceremony_id: button.dataset.ceremony, credential: await get(options) });
    location.assign(next(button));
  },
  // Sign up with a passkey: the email from the form.
  async 'sign-up'() {
    const email = document.getElementById('email').value;
    const started = await post('/api/v1/sign-up/passkey/start', { email });
    await post('/api/v1/sign-up/passkey/finish', { ceremony_id: started.ceremony_id, credential: await create(started.options) });
    location.assign('/check-email');
  },
  // Add a passkey to the signed-in account.
  async add() {
    const name = document.getElementById('passkey-name')?.value || '';
    const started = await post('/api/v1/me/passkeys/register/start');
    await post('/api/v1/me/passkeys/register/finish', { ceremony_id: started.ceremony_id, name, credential: await create(started.options) });
    location.assign('/account?notice=passkey-added');
  },
};

for (const button of document.querySelectorAll('button[data-passkey]')) {
  if (!window.PublicKeyCredential) continue;
  button.hidden = false;
  button.addEventListener('click', async (event) => {
    event.preventDefault();
    const status = document.getElementById(button.dataset.status || 'passkey-status');
    button.disabled = true;
    if (status) status.textContent = 'Waiting for your passkey…';
    try {
      await actions[button.dataset.passkey](button);
    } catch (e) {
      if (status) status.textContent = e.name === 'NotAllowedError' ? 'The passkey was not used. Try again.' : e.message;
      button.disabled = false;
    }
  });
}
