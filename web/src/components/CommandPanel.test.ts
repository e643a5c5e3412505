import { mount } from "@vue/test-utils";
import { describe, expect, it } from "vitest";
import CommandPanel from "./CommandPanel.vue";

const commands = {
  reboot: { type: "object", properties: {}, required: [] },
  set_brightness: {
    type: "object",
    properties: { brightness: { type: "integer", minimum: 0, maximum: 100 } },
    required: ["brightness"],
  },
};
const history = [
  { request_id: "r1", device_id: "d", action: "reboot", params: {}, status: "applied", error: null, created_at: "2026-11-22T10:00:00Z" },
];

describe("CommandPanel", () => {
  it("builds inputs from the chosen command's schema and refuses bad values before sending", async () => {
    const wrapper = mount(CommandPanel, { props: { deviceId: "d", commands, history, canSend: true } });
    const select = wrapper.get("select#cmd-action");
    expect(select.findAll("option").map((o) => o.text())).toEqual(["reboot", "set_brightness"]);
    expect(wrapper.find("#cmd-brightness").exists()).toBe(false);
    await select.setValue("set_brightness");
    const input = wrapper.get("#cmd-brightness");
    expect(input.attributes("type")).toBe("number");
    await input.setValue("250");
    await wrapper.get("form").trigger("submit");
    expect(wrapper.get("#cmd-brightness-err").text()).toBe("At most 100.");
    expect(input.attributes("aria-invalid")).toBe("true");
    expect(wrapper.emitted("sent")).toBeUndefined();
  });

  it("shows the history but no form to a role that may not send", () => {
    const wrapper = mount(CommandPanel, { props: { deviceId: "d", commands, history, canSend: false } });
    expect(wrapper.find("form").exists()).toBe(false);
    expect(wrapper.find("button").exists()).toBe(false);
    expect(wrapper.get('[data-request="r1"]').text()).toContain("applied");
  });
});
